"""The spec models' value rules that hold for a class of inputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rescompile.compiler.ops import OP_TYPES, Elementwise
from rescompile.spec import models
from rescompile.spec.errors import RescompileError
from rescompile.spec.expressions import Expression
from rescompile.spec.loader import load_part

# Every float attribute stored as a float32 weight or constant, in a node that needs nothing else.
FLOAT32_NODES = {
    ("conv", "standardize_epsilon"): "{op: conv, out_channels: width, kernel: 1, standardize_weight: true, VALUE}",
    ("batch_norm", "epsilon"): "{op: batch_norm, VALUE}",
    ("batch_norm", "momentum"): "{op: batch_norm, VALUE}",
    ("group_norm", "epsilon"): "{op: group_norm, groups: 1, VALUE}",
    ("layer_norm", "epsilon"): "{op: layer_norm, VALUE}",
    ("layer_scale", "init"): "{op: layer_scale, VALUE}",
    ("drop_path", "rate"): "{op: drop_path, VALUE}",
    # An elementwise op needs nothing but its float.
    **{
        (op_type.kind, field): f"{{op: {op_type.kind}, VALUE}}"
        for op_type in OP_TYPES
        if issubclass(op_type, Elementwise)
        for field, annotation in get_type_hints(op_type).items()
        if annotation is float
    },
}
BLOCK = """name: t
out_channels: width
nodes:
  conv1: {op: conv, out_channels: width, kernel: 1}
  probe: NODE
  add: {op: add, inputs: [probe, shortcut]}
"""


def _checks_float32(validator: object) -> bool:
    """Whether a field's validator is the float32 check: of a number, or of a real expression's literal."""
    return validator is models._float32 or getattr(validator, "func", None) is models._to_real_expression


def _float32_fields() -> set[tuple[str, str]]:
    found = set()
    for member in models.OpSpec.__args__[0].__args__:
        assert issubclass(member, BaseModel)
        for name, field in member.model_fields.items():
            if any(_checks_float32(getattr(check, "func", None)) for check in field.metadata):
                found.add((member.model_fields["op"].annotation.__args__[0], name))
    return found


def test_every_float32_attribute_is_drawn_below() -> None:
    assert _float32_fields() == set(FLOAT32_NODES)


@settings(max_examples=60, deadline=None)
@given(
    where=st.sampled_from(sorted(FLOAT32_NODES)),
    value=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e300, -1e300, 3.5e38, 1e-50, 1e-46])
    ),
)
def test_a_float_stored_in_float32_is_finite_there_or_a_located_error(
    where: tuple[str, str], value: float, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """layer_scale's init 1e300 was accepted and overflowed at build()."""
    path = tmp_path_factory.mktemp("float32") / "t.yaml"
    node = FLOAT32_NODES[where].replace("VALUE", f"{where[1]}: {value!r}")
    path.write_text(BLOCK.replace("NODE", node))
    try:
        part = load_part(path, "blocks")
    except RescompileError as error:
        assert re.fullmatch(rf"\S+t\.yaml:5:\d+: nodes\.probe\.{where[1]}: .+", str(error)), str(error)
        return
    value = getattr(part.spec.nodes["probe"], where[1])
    stored = np.float32(value.evaluate({}) if isinstance(value, Expression) else value)
    assert np.isfinite(stored) and (stored != 0 or value == 0)


def test_layer_scale_beyond_float32_names_the_range(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BLOCK.replace("NODE", "{op: layer_scale, init: 1.0e+300}"))
    with pytest.raises(RescompileError) as raised:
        load_part(path, "blocks")
    assert str(raised.value) == (
        f"{path}:5:34: nodes.probe.init: beyond float32's range (±3.4028235e38), which the weights are stored in "
        "(got 1e+300)"
    )
