"""Write what every backend generates for every built-in network and every example into a folder,
so that a refactoring of the compiler can be checked byte for byte: ``diff -r before after``.

    .venv/bin/python scripts/snapshot_sources.py /tmp/before
    ... change the compiler ...
    .venv/bin/python scripts/snapshot_sources.py /tmp/after && diff -r /tmp/before /tmp/after

Per network: the torch source (training and inference lowering), the flax source, and the ONNX
model (plain and with BatchNorm folded) without its weight data (the weights are drawn, not
compiled; names, types and shapes of the initializers are kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rescompile.backends import flax_backend, onnx_backend, torch_backend
from rescompile.compiler import compile_spec
from rescompile.spec import builtin_networks

ROOT = Path(__file__).resolve().parents[1]


def networks() -> list[tuple[str, str | Path]]:
    """(file stem, reference) of every built-in and every example network."""
    found: list[tuple[str, str | Path]] = [(name, name) for name in builtin_networks()]
    found += [(f"example_{path.stem}", path) for path in sorted((ROOT / "examples").glob("*.yaml"))]
    return found


def onnx_skeleton(model: onnx_backend.OnnxModel) -> bytes:
    """The model's serialisation without weight data (the skeleton carries names, types, dims)."""
    return model.skeleton.SerializeToString(deterministic=True)


def snapshot(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for stem, reference in networks():
        graph = compile_spec(reference)
        outputs: dict[str, str | bytes] = {
            "torch.py": torch_backend.emit_source(graph),
            "torch_inference.py": torch_backend.emit_source(graph, inference=True),
            "flax.py": flax_backend.emit_source(graph),
        }
        if len(graph.blocks) <= 200:  # resnet1202's 600 blocks of weights take minutes to draw
            outputs["onnx"] = onnx_skeleton(onnx_backend.emit_model(graph))
            outputs["folded.onnx"] = onnx_skeleton(onnx_backend.emit_model(graph, fold_bn=True))
        for suffix, content in outputs.items():
            path = folder / f"{stem}_{suffix}"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            count += 1
    return count


if __name__ == "__main__":
    print(f"{snapshot(Path(sys.argv[1]))} files written to {sys.argv[1]}")
