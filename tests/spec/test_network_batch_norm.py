"""A network's batch_norm key sets the epsilon and momentum of every batch_norm node of its parts
that does not set its own (torchvision's norm_layer of MobileNetV3); bad values are located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.compiler import compile_spec
from rescompile.compiler.ops import BatchNorm
from rescompile.spec.errors import RescompileError

NETWORK = """name: net
input: {channels: 3, size: 32}
stem: cifar
block: own_eps
shortcut: B
stages:
  - {depth: 1, width: 16}
  - {depth: 1, width: 32, stride: 2}
head: classifier
batch_norm: {epsilon: 0.001, momentum: 0.01}
"""
BLOCK = """name: own_eps
extends: basic
replace:
  bn2: {op: batch_norm, epsilon: 0.01, zero_init: true}
"""


def _norms(network: Path) -> dict[str, tuple[float, float]]:
    """Each BatchNorm's epsilon and momentum, by its path (the stem's: its own name)."""
    graph = compile_spec(network)
    return {
        ".".join(filter(None, (module.path, node.name))): (node.op.epsilon, node.op.momentum)
        for module, node in graph.nodes()
        if isinstance(node.op, BatchNorm)
    }


@pytest.fixture
def network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "own_eps.yaml").write_text(BLOCK)
    (tmp_path / "net.yaml").write_text(NETWORK)
    return tmp_path / "net.yaml"


def test_every_batch_norm_that_sets_nothing_takes_the_networks_and_a_nodes_own_value_wins(network: Path) -> None:
    norms = _norms(network)
    assert norms["bn1"] == (0.001, 0.01)  # the stem's
    assert norms["layer1.0.bn1"] == (0.001, 0.01)
    assert norms["layer2.0.downsample.1"] == (0.001, 0.01)  # a shortcut's
    assert norms["layer1.0.bn2"] == (0.01, 0.01)  # its own epsilon, the network's momentum


def test_without_the_key_batch_norms_keep_torchs_defaults(network: Path) -> None:
    network.write_text(NETWORK.replace("batch_norm: {epsilon: 0.001, momentum: 0.01}\n", ""))
    norms = _norms(network)
    assert norms["layer1.0.bn1"][0] == pytest.approx(1e-5) and norms["layer1.0.bn1"][1] == 0.1
    assert norms["layer1.0.bn2"] == (0.01, 0.1)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("{epsilon: 0}", "net.yaml:10:23: batch_norm.epsilon: input should be greater than 0 (got 0)"),
        ("{momentum: 1.5}", "net.yaml:10:24: batch_norm.momentum: input should be less than 1 (got 1.5)"),
        ("{epsilno: 0.001}", "net.yaml:10:14: unknown key 'epsilno' (did you mean 'epsilon'?); valid keys here: "),
    ],
)
def test_bad_network_batch_norm_settings_are_located_errors(network: Path, setting: str, message: str) -> None:
    network.write_text(NETWORK.replace("{epsilon: 0.001, momentum: 0.01}", setting))
    with pytest.raises(RescompileError) as raised:
        compile_spec(network)
    assert str(raised.value).startswith(message)
