"""The backends, by name: the one place they are listed.

A new backend is one module implementing :class:`~rescompile.backends.interface.Implementation`,
one implementing :class:`~rescompile.backends.interface.Runtime` and one entry below declaring what
it can do (plus its lines in the ``TYPE_CHECKING`` block, where mypy checks the modules).
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
            runtime="rescompile.backends.torch_runtime",
            options=frozenset({"weights", "inference"}),
            bench_options=frozenset({"train", "compile", "dtype", "inference", "channels_last"}),
            head_options=frozenset({"num_classes", "global_pool", "drop_rate"}),
            trains=True,
        ),
        Backend(
            "flax",
            "_flax.py",
            requires="flax",
            extra="jax",
            module="rescompile.backends.flax_backend",
            runtime="rescompile.backends.flax_runtime",
            options=frozenset({"weights"}),
            # NOTE: no inference lowering: XLA folds BatchNorm itself under jit.
            bench_options=frozenset({"train", "compile", "dtype"}),
            head_options=frozenset({"num_classes", "global_pool"}),
            trains=True,
        ),
        Backend(
            "onnx",
            ".onnx",
            requires="onnx",
            extra="onnx",
            module="rescompile.backends.onnx_backend",
            runtime="rescompile.backends.onnx_runtime",
            # ONNX Runtime inference in fp32: --inference is the folded model.
            bench_options=frozenset({"inference"}),
            options=frozenset({"weights", "seed", "zero_init_residual", "opset", "fold_bn", "fixed_size", "features"}),
        ),
    )
}

if TYPE_CHECKING:
    # Never imported at run time (that would import every framework): mypy checks here that each
    # module implements the interface its entry promises.
    from rescompile.backends import (
        flax_backend,
        flax_runtime,
        onnx_backend,
        onnx_runtime,
        torch_backend,
        torch_runtime,
    )
    from rescompile.backends.interface import Implementation, Lowering, Runtime, SizeFixing, Trainer

    _IMPLEMENTATIONS: tuple[Implementation, ...] = (torch_backend, flax_backend, onnx_backend)
    _RUNTIMES: tuple[Runtime, ...] = (torch_runtime, flax_runtime, onnx_runtime)
    _TRAINERS: tuple[Trainer, ...] = (torch_runtime, flax_runtime)  # the entries with trains=True
    _LOWERINGS: tuple[Lowering, ...] = (torch_backend,)  # the entries whose options have inference
    _SIZE_FIXING: tuple[SizeFixing, ...] = (onnx_backend,)  # the entries whose options have fixed_size
