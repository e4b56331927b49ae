"""The backends, by name: the one place they are listed.

A new backend is one module implementing :class:`~rescompile.backends.interface.Implementation`
and one entry below (plus its line in the ``TYPE_CHECKING`` block, where mypy checks the module).
The order is the order ``rescompile check`` runs and reports them in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rescompile.backends.interface import Backend

BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "torch",
            "_torch.py",
            requires="torch",
            extra="torch",
            module="rescompile.backends.torch_backend",
            options=frozenset({"weights", "inference"}),
        ),
        Backend(
            "flax",
            "_flax.py",
            requires="flax",
            extra="jax",
            module="rescompile.backends.flax_backend",
            options=frozenset({"weights"}),
        ),
        Backend(
            "onnx",
            ".onnx",
            requires="onnx",
            extra="onnx",
            module="rescompile.backends.onnx_backend",
            options=frozenset({"weights", "seed", "zero_init_residual", "opset", "fold_bn", "fixed_size", "features"}),
        ),
    )
}

if TYPE_CHECKING:
    # Never imported at run time (that would import every framework): mypy checks here that each
    # module implements the interface its entry promises.
    from rescompile.backends import flax_backend, onnx_backend, torch_backend
    from rescompile.backends.interface import Implementation

    _IMPLEMENTATIONS: tuple[Implementation, ...] = (torch_backend, flax_backend, onnx_backend)
