"""Testing helpers for rescompile and for users testing their own blocks: the tolerances
``check`` and ``bench`` compare backends with, and the Hypothesis strategy of valid networks.

:func:`assert_close` is the one tolerance helper: every numerical comparison in the test suite
goes through it, with the tolerances stated at the call site or taken from :data:`TOLERANCES`.
:func:`op_network` writes a small network that uses every op of the op table, each as its class's
``example`` states. Helpers only the test suite uses are in ``tests/support.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rescompile.compiler.ops import OP_TYPES, Op

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


TOLERANCES: dict[str, Tolerance] = {
    # The same kernels on both sides (e.g. rescompile's torch module against torchvision).
    "same_framework": Tolerance(atol=1e-5, rtol=1e-5),
    # fp32 across frameworks, one block (measured ~1e-6).
    "block": Tolerance(atol=1e-5, rtol=1e-5),
    # fp32 across frameworks, logits of a whole network (ResNet-50 measured ~1e-4).
    "network": Tolerance(atol=1e-4, rtol=1e-4),
}


def max_differences(actual: npt.ArrayLike, expected: npt.ArrayLike) -> tuple[float, float]:
    """(max absolute difference, max relative difference) between two arrays of one shape.

    The relative difference is ``max |actual - expected| / max |expected|``: relative to the
    tensor's scale, so that elements near zero do not make it meaningless.
    """
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    if actual_array.shape != expected_array.shape:
        raise AssertionError(f"shape {actual_array.shape} != expected {expected_array.shape}")
    if actual_array.size == 0:
        return 0.0, 0.0
    largest = float(np.abs(actual_array - expected_array).max())
    scale = float(np.abs(expected_array).max())
    return largest, largest / scale if scale > 0 else (0.0 if largest == 0 else float("inf"))


def within(actual: npt.ArrayLike, expected: npt.ArrayLike, tolerance: Tolerance) -> bool:
    """``max |actual - expected| <= atol + rtol * max |expected|``.

    NOTE: rtol is relative to the tensor's scale, not to each element (numpy.allclose's rule).
    fp32 rounding errors scale with the magnitudes flowing through a network, so an element near
    zero in a tensor of large values carries the same absolute error as its neighbours; an
    elementwise rule would flag it although nothing is wrong.
    """
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    if actual_array.shape != expected_array.shape:
        return False
    if actual_array.size == 0:
        return True
    largest = np.abs(actual_array - expected_array).max()
    return bool(largest <= tolerance.atol + tolerance.rtol * np.abs(expected_array).max())


def assert_close(
    actual: npt.ArrayLike,
    expected: npt.ArrayLike,
    *,
    tolerance: Tolerance | str = "network",
    what: str = "output",
) -> None:
    """Assert :func:`within` (``max |actual - expected| <= atol + rtol * max |expected|``), with a
    message giving both differences."""
    limit = TOLERANCES[tolerance] if isinstance(tolerance, str) else tolerance
    max_abs, max_rel = max_differences(actual, expected)
    if not within(actual, expected, limit):
        raise AssertionError(
            f"{what}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e} "
            f"exceed atol={limit.atol:g}, rtol={limit.rtol:g}"
        )


# --- Hypothesis strategies ------------------------------------------------------------------------
# Imported lazily so that `assert_close` works without Hypothesis installed.


def network_specs(
    *,
    blocks: tuple[str, ...] = ("basic", "bottleneck"),
    shortcuts: tuple[str, ...] = ("A", "B", "C", "none", "projection_where_needed"),
    stems: tuple[str, ...] = ("imagenet", "cifar"),
    max_stages: int = 3,
    max_depth: int = 2,
    widths: tuple[int, ...] = (4, 8, 12, 16),
    max_size: int = 40,
) -> Any:
    """A Hypothesis strategy of valid :class:`~rescompile.spec.models.NetworkSpec` objects.

    Draws the stem, block type (and the bottleneck's stride placement and groups), the shortcut
    policy, 1..``max_stages`` stages with depth, width and stride, input channels and sizes
    (odd ones included) and the number of classes. Pass your own block names (files resolvable
    from the built-ins or next to the spec) to property-test your own blocks. Every drawn spec
    lowers without error; compile it with :func:`rescompile.compiler.lower_spec`.
    """
    from hypothesis import strategies as st

    from rescompile.spec.models import NetworkSpec

    @st.composite
    def build(draw: st.DrawFn) -> NetworkSpec:
        block = draw(st.sampled_from(blocks))
        block_parameters: dict[str, int | str] = {}
        if block == "bottleneck":
            block_parameters["stride_at"] = draw(st.sampled_from(["conv1", "conv2"]))
            block_parameters["groups"] = draw(st.sampled_from([1, 2]))
            block_parameters["expansion"] = draw(st.sampled_from([1, 2, 4]))
        shortcut_choice = draw(st.sampled_from(shortcuts))
        shortcut: str | dict[str, str] = shortcut_choice
        if shortcut_choice == "projection_where_needed":
            shortcut = {"where_shapes_match": "identity", "where_shapes_change": "projection"}
        stage_count = draw(st.integers(1, max_stages))
        stages = [
            {
                "depth": draw(st.integers(1, max_depth)),
                "width": draw(st.sampled_from(widths)),
                "stride": draw(st.sampled_from([1, 2])),
            }
            for _ in range(stage_count)
        ]
        stem_width = draw(st.sampled_from(widths))
        if shortcut_choice == "A":
            # Zero padding can add channels but never remove them: widths must not shrink.
            ordered = sorted(stage["width"] for stage in stages)
            for stage, width in zip(stages, ordered, strict=True):
                stage["width"] = width
            stem_width = min(stem_width, ordered[0])
        size = draw(st.integers(1, max_size) | st.tuples(st.integers(1, max_size), st.integers(1, max_size)))
        return NetworkSpec.model_validate(
            {
                "name": "generated",
                "input": {"channels": draw(st.integers(1, 4)), "size": size},
                "stem": draw(st.sampled_from(stems)),
                "stem_parameters": {"width": stem_width},
                "block": block,
                "block_parameters": block_parameters,
                "shortcut": shortcut,
                "stages": stages,
                "head": "classifier",
                "head_parameters": {"classes": draw(st.integers(1, 12))},
            }
        )

    return build()


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
    return one_block_network(folder, "op_net", [*nodes, f"residual: {{op: add, inputs: [{previous}, shortcut]}}"])


ENTRY_CONV = "entry: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1, bias: true}"


def one_block_network(folder: Path, name: str, nodes: list[str]) -> Path:
    """``net.yaml`` in ``folder``: two stages of one block of ``nodes`` (written ``blocks/op_block.yaml``),
    with the cifar stem and the classifier head, for 8×8 inputs."""
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
