"""Test helpers for rescompile and for users testing their own blocks.

:func:`assert_close` is the one tolerance helper: every numerical comparison in the test suite
goes through it, with the tolerances stated at the call site or taken from :data:`TOLERANCES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


TOLERANCES: dict[str, Tolerance] = {
    # The same kernels on both sides (e.g. rescompile's torch module against torchvision).
    "same_framework": Tolerance(atol=1e-5, rtol=1e-5),
    # fp32 across frameworks, one block (measured ~1e-6; see DESIGN.md).
    "block": Tolerance(atol=1e-5, rtol=1e-5),
    # fp32 across frameworks, logits of a whole network (ResNet-50 measured ~1e-4).
    "network": Tolerance(atol=1e-4, rtol=1e-4),
}


def max_differences(actual: npt.ArrayLike, expected: npt.ArrayLike) -> tuple[float, float]:
    """(max absolute difference, max relative difference) between two arrays of one shape."""
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    if actual_array.shape != expected_array.shape:
        raise AssertionError(f"shape {actual_array.shape} != expected {expected_array.shape}")
    difference = np.abs(actual_array - expected_array)
    if difference.size == 0:
        return 0.0, 0.0
    relative = difference / np.maximum(np.abs(expected_array), np.finfo(np.float32).tiny)
    return float(difference.max()), float(relative.max())


def assert_close(
    actual: npt.ArrayLike,
    expected: npt.ArrayLike,
    *,
    tolerance: Tolerance | str = "network",
    what: str = "output",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, with a useful message."""
    limit = TOLERANCES[tolerance] if isinstance(tolerance, str) else tolerance
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    max_abs, max_rel = max_differences(actual_array, expected_array)
    within = np.abs(actual_array - expected_array) <= limit.atol + limit.rtol * np.abs(expected_array)
    if not bool(np.all(within)):
        raise AssertionError(
            f"{what}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e} exceed "
            f"atol={limit.atol:g}, rtol={limit.rtol:g} ({int((~within).sum())} of {within.size} elements)"
        )
