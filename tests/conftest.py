"""Shared test configuration: Hypothesis profiles.

``ci`` (the default) is bounded and derandomised so CI time and results are stable;
``thorough`` draws many more examples: ``HYPOTHESIS_PROFILE=thorough ./dev test``.
"""

import functools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest
from _pytest.mark import ParameterSet
from hypothesis import HealthCheck, settings

from rescompile.compiler import Graph, compile_spec
from rescompile.compiler.ops import OP_TYPES, Elementwise, Op

settings.register_profile(
    "ci",
    # 10, not hypothesis's 100: the network properties build and run every backend per example
    # (tests/test_equivalence_properties.py took ~5% of the default suite's time at 15).
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """NOTE: torch on one thread for the whole run. Its OpenMP threads busy-wait at every barrier
    and fight XLA's and ONNX Runtime's pools for the 2 cores of a CI machine: a 32×32 resnet110
    pass took 4-6 s instead of 0.02 s next to jax. The suite's small inputs gain little from two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPEATED_PRESETS = frozenset(
    {
        *("resnet50c", "resnet50s", "resnet200d", "seresnet50", "plain32", "plain44"),
        *("resnet101", "resnet152", "resnet101_v1", "resnet152_v1", "resnet110"),
    }
)
"""Built-ins whose parts (stem, blocks, shortcuts) other built-ins already exercise in the default
run: resnet50d has resnet50c's and resnet50s's deep stem, seresnext50_32x4d seresnet50's block,
plain20 and plain56 the parts of plain32 and plain44, resnet50 and resnet50_v1 those of the deeper
torchvision nets, resnet20 and resnet56 resnet110's.
Tests parametrised over every built-in run these only in the slow tail (``-m slow``); the timm
comparison (tests/test_timm_presets.py) runs every preset by default."""


COMPILE_TEST_PRESETS = frozenset(
    {
        *("resnet20", "resnetblur50", "ecaresnet50d", "resnetv2_50x1_bit", "preact_resnet110", "resnet50d"),
        *("res2net50_26w_4s", "resnest50d", "convnext_tiny", "gcresnet50t"),
    }
)
"""Built-ins the torch.compile, TorchScript and nnx.jit tests run by default beside :func:`op_network`
(which uses every op kind): a spread of the built-ins' parts; the other built-ins run in the slow tail."""


PART_COVERING_PRESETS = frozenset(
    {
        *("resnet20", "resnet50", "resnest50d", "convnext_tiny", "resnetv2_50", "resnetv2_50x1_bit", "skresnet18"),
        *("regnetx_016", "regnety_016", "res2net50_26w_4s", "preact_resnet110", "preact_resnet164", "resnet50_gn"),
        *("resnetblur50", "resnetaa50", "resnetrs50", "ecaresnet50d", "gcresnet50t"),
        *("mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "efficientnetv2_rw_s"),
        *("regnetz_b16", "tv_efficientnet_b0"),
    }
)
"""Built-ins that between them use every stem, block, shortcut, transition and head (and so every op)
of the built-ins (tests/backends/test_emitter_tables.py checks it). A part compiles to the same code in
every network that uses it, so tests that compare backends network by network run these by default
and the other built-ins in the slow tail."""


ELEMENTWISE_OP_KINDS = tuple(op_type.kind for op_type in OP_TYPES if issubclass(op_type, Elementwise))
"""The op table's elementwise activations: each is covered by :func:`elementwise_network`, built from
the table, rather than by a built-in."""
OP_NETWORK = "op_network"
"""The name that stands for :func:`op_network` among built-ins' names in a test's parameters."""


def elementwise_network(folder: Path, kind: str, attributes: Mapping[str, object] | None = None) -> Path:
    """A small network (``net.yaml`` in ``folder``) whose one block is ``x + op(conv(x))`` for the
    op ``kind`` with ``attributes`` (its defaults where none): the op between a conv and the residual
    add, where every backend writes it inside a block class."""
    options = "".join(f", {key}: {value}" for key, value in (attributes or {}).items())
    nodes = [
        ENTRY_CONV.replace("entry", "conv"),
        f"act: {{op: {kind}{options}}}",
        "add: {op: add, inputs: [act, shortcut]}",
    ]
    return _one_block_network(folder, f"{kind}_net", nodes)


def op_network(folder: Path, op_types: Iterable[type[Op]] = OP_TYPES) -> Path:
    """A small network (``net.yaml`` in ``folder``) built from the op table: its one block uses each op
    of ``op_types`` as its ``example`` states, one after another, each reading the last one's C×H×W
    output, between a strided conv and the residual add; its head is the classifier (flatten and
    linear). A new op is in it as soon as it is in the table: no published network needs to use it."""
    nodes, previous = [ENTRY_CONV], "entry"
    for op_type in op_types:
        example = op_type.example if op_type.example is not None else {op_type.kind: f"{{op: {op_type.kind}}}"}
        nodes += [f"{name}: {node.replace('INPUT', previous)}" for name, node in example.items()]
        previous = list(example)[-1] if example else previous
    return _one_block_network(folder, "op_net", [*nodes, f"residual: {{op: add, inputs: [{previous}, shortcut]}}"])


ENTRY_CONV = "entry: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1, bias: true}"


def _one_block_network(folder: Path, name: str, nodes: list[str]) -> Path:
    """``net.yaml`` in ``folder``: two stages of one block of ``nodes``, with the cifar stem and the classifier."""
    (folder / "blocks").mkdir(exist_ok=True)
    lines = "".join(f"  {node}\n" for node in nodes)
    (folder / "blocks" / "op_block.yaml").write_text(f"name: op_block\nout_channels: width\nnodes:\n{lines}")
    network = folder / "net.yaml"
    network.write_text(
        f"name: {name}\ninput: {{channels: 3, size: 8}}\nstem: cifar\nblock: op_block\nshortcut: B\n"
        "stages:\n  - {depth: 1, width: 16}\n  - {depth: 1, width: 32, stride: 2}\n"
        "head: classifier\nhead_parameters: {classes: 10}\n"
    )
    return network


def network_params(names: Iterable[str], default: frozenset[str]) -> list[ParameterSet]:
    """:data:`OP_NETWORK` (run by default: every op kind), then ``names`` as :func:`builtin_params`."""
    return [pytest.param(OP_NETWORK, id=OP_NETWORK), *builtin_params(names, default)]


def network_source(name: str, folder: Path) -> Path | str:
    """What compile_spec reads for a parameter of :func:`network_params`: the op network, written in
    ``folder``, or the built-in ``name``."""
    return op_network(folder) if name == OP_NETWORK else name


def builtin_params(names: Iterable[str], default: frozenset[str] = PART_COVERING_PRESETS) -> list[ParameterSet]:
    """``names`` as pytest parameters, those outside ``default`` marked slow."""
    return [pytest.param(name, id=name, marks=[] if name in default else [pytest.mark.slow]) for name in names]


@functools.cache
def compiled(name: str, size: int | None = None) -> Graph:
    """``compile_spec(name, size=size)`` once per test process: a Graph is immutable, and many tests
    compile the same built-in (tests of compiling itself call ``compile_spec``)."""
    return compile_spec(name, size=size)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.path.name == "test_timm_presets.py":
            continue
        if any(isinstance(value, str) and value in REPEATED_PRESETS for value in callspec.params.values()):
            item.add_marker(pytest.mark.slow)
