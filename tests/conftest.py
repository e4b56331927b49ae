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
from rescompile.compiler.ops import OP_TYPES, Elementwise
from rescompile.testing import ENTRY_CONV, one_block_network, op_network

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
        *("regnetz_b16", "tv_efficientnet_b0", "tv_mobilenet_v2", "tv_mobilenet_v3_large"),
        *("cspresnet50", "cspdarknet53"),
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
    return one_block_network(folder, f"{kind}_net", nodes)


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
