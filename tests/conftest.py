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
from rescompile.spec.loader import builtin_directory, builtin_networks, load_network, load_parts, resolve_network
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
comparison (tests/test_timm_presets.py) chooses its own by :data:`PART_COVERING_PRESETS`."""


COMPILE_TEST_PRESETS = frozenset({"resnet20", "resnest50d"})
"""Built-ins the torch.compile, TorchScript and nnx.jit tests run by default beside :func:`op_network`
(which uses every op kind): a plain ResNet and one whose block holds classes of its own (SplitAttn)
beside a deep stem and an average-pooling shortcut; the other built-ins run in the slow tail."""


@functools.cache
def compiled(name: str, size: int | None = None) -> Graph:
    """``compile_spec(name, size=size)`` once per test process: a Graph is immutable, and many tests
    compile the same built-in (tests of compiling itself call ``compile_spec``)."""
    return compile_spec(name, size=size)


@functools.cache
def parts_used(name: str) -> frozenset[str]:
    """What of the built-in parts the built-in network ``name`` uses: the part files it reads
    (``blocks/basic.yaml``; its blocks' ``extends`` and module uses included) and the part classes
    it compiles to (``block timm_inverted_residual_first``: a block whose instances unroll
    differently is one class per unrolling)."""
    folder = builtin_directory()
    files = load_parts(load_network(name), resolve_network(name)).files
    return frozenset(
        {path.relative_to(folder).as_posix() for path in files if path.parent != folder}  # no network file
        | {f"{definition.role} {definition.name}" for definition in compiled(name).definitions}
    )


def part_cover(names: Iterable[str]) -> frozenset[str]:
    """Networks among ``names`` that between them use every built-in part any of ``names`` uses
    (:func:`parts_used`), none of them redundant: greedily the one using the most parts not yet
    used (on a tie the one of fewest blocks, the cheaper to run), then any whose parts the others
    use dropped. A part compiles to the same code in every network that uses it, so a test
    comparing networks runs this cover by default and the others in the slow tail; a new preset or
    part joins it without a list to update."""
    candidates = sorted(set(names))
    blocks = {name: sum(stage.depth for stage in load_network(name).spec.stages) for name in candidates}
    unused = set().union(*(parts_used(name) for name in candidates))
    cover: list[str] = []
    while unused:
        best = min(candidates, key=lambda name: (-len(parts_used(name) & unused), blocks[name], name))
        cover.append(best)
        unused -= parts_used(best)
    for name in list(cover):
        others = set().union(*(parts_used(other) for other in cover if other != name))
        if parts_used(name) <= others:
            cover.remove(name)
    return frozenset(cover)


PART_COVERING_PRESETS = part_cover(builtin_networks())
"""Built-ins that between them use every built-in part file (stem, block, shortcut, transition,
head, module) and compile to every part class: tests that compare backends network by network run
these by default and the other built-ins in the slow tail."""


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.path.name == "test_timm_presets.py":
            continue
        if any(isinstance(value, str) and value in REPEATED_PRESETS for value in callspec.params.values()):
            item.add_marker(pytest.mark.slow)
