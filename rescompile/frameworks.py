"""Importing an optional framework (torch, jax, flax, onnx) with a one-line error that says why
it failed: not installed is one fix (``pip install``), installed but failing to load (a missing
shared library, a dependency at the wrong version) is another, and the reason is shown."""

from __future__ import annotations

import importlib
from types import ModuleType

from rescompile.spec.errors import RescompileError


def import_framework(module: str, needed_by: str, extra: str) -> ModuleType:
    """``module`` imported, or a RescompileError: ``{needed_by} needs torch, which is not installed:
    pip install 'rescompile[torch]'`` when the module itself is absent, else ``... which is
    installed but fails to import (OSError: libcudnn.so.9: cannot open shared object file)``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        # Only the module itself (or its package) missing means "not installed"; a missing
        # dependency of an installed module is a broken installation.
        if error.name is not None and module.split(".")[0] == error.name.split(".")[0]:
            raise RescompileError(
                f"{needed_by} needs {module}, which is not installed: pip install 'rescompile[{extra}]'"
            ) from None
        raise RescompileError(_broken(module, needed_by, error)) from None
    except Exception as error:  # ImportError, OSError, or anything a module's own import code raises
        raise RescompileError(_broken(module, needed_by, error)) from None


def _broken(module: str, needed_by: str, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"{needed_by} needs {module}, which is installed but fails to import ({reason})"
