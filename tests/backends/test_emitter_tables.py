"""Every IR op kind has an emitter in every backend (an op a backend cannot express exactly is a
compile-time error in that emitter, never a missing entry)."""

import pytest
from conftest import OP_COVERING_PRESETS, PART_COVERING_PRESETS, TESTED_APART_OP_KINDS

from rescompile import create_graph
from rescompile.backends.interface import Backend
from rescompile.backends.registry import BACKENDS
from rescompile.compiler.ir import OP_KINDS
from rescompile.spec.loader import builtin_networks


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS)
def test_backend_has_an_emitter_for_every_op_kind(backend: Backend) -> None:
    assert backend.op_kinds() == set(OP_KINDS)


def test_the_op_covering_presets_use_every_op_kind_but_those_tested_apart() -> None:
    """The compile tests run OP_COVERING_PRESETS by default on the strength of this; an elementwise
    op needs no built-in that uses it: tests/backends/test_elementwise_ops.py builds a network for
    each from the op table and compiles it in every backend (and so, for clamp,
    does tests/backends/test_constants_and_attention_pooling.py)."""
    used = {node.op.kind for name in OP_COVERING_PRESETS for _, node in create_graph(name).nodes()}
    missing = set(OP_KINDS) - used - set(TESTED_APART_OP_KINDS)
    assert not missing, f"no default-run preset uses {sorted(missing)}"


def test_the_part_covering_presets_use_every_op_kind_and_every_built_in_part() -> None:
    """The backend comparisons run PART_COVERING_PRESETS by default on the strength of this."""

    def used(name: str) -> set[tuple[str, str]]:
        graph = create_graph(name)
        return {(str(item.role), item.name) for item in graph.definitions} | {
            ("op", n.op.kind) for _, n in graph.nodes()
        }

    everything = set().union(*(used(name) for name in builtin_networks()))
    covered = set().union(*(used(name) for name in PART_COVERING_PRESETS))
    assert everything - covered == set()
    assert {kind for role, kind in covered if role == "op"} | set(TESTED_APART_OP_KINDS) == set(OP_KINDS)
