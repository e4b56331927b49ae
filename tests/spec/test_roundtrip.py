"""A spec dumped back to YAML and reloaded is the same spec."""

from pathlib import Path

import pytest
from hypothesis import given

from rescompile.spec import builtin_networks, dump_network, load_network
from rescompile.spec.models import NetworkSpec
from rescompile.spec.yaml_source import parse_yaml
from rescompile.testing import network_specs


def reload(spec: NetworkSpec) -> NetworkSpec:
    return NetworkSpec.model_validate(parse_yaml(dump_network(spec), "<dumped>").data)


@given(network_specs())
def test_generated_spec_survives_a_yaml_round_trip(spec: NetworkSpec) -> None:
    assert reload(spec) == spec


@pytest.mark.parametrize("name", builtin_networks())
def test_builtin_spec_survives_a_yaml_round_trip(name: str, tmp_path: Path) -> None:
    spec = load_network(name).spec
    (tmp_path / "again.yaml").write_text(dump_network(spec))
    # A network that extends another is dumped whole, its base merged in: no extends left.
    assert load_network(tmp_path / "again.yaml").spec == spec.model_copy(update={"extends": None})
