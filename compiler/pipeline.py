"""The pass pipeline, one flat list of named steps, with the verifier after each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rescompile.compiler.expand import expand
from rescompile.compiler.ir import Graph
from rescompile.compiler.shapes import infer_shapes
from rescompile.compiler.verify import verify
from rescompile.spec.loader import Loaded, load_network, resolve_network
from rescompile.spec.models import InputSpec, NetworkSpec

Pass = Callable[[Graph], Graph]
PASSES: tuple[tuple[str, Pass], ...] = (("infer_shapes", infer_shapes),)


def lower(network: Loaded[NetworkSpec], network_file: Path | None = None) -> Graph:
    """Spec -> verified IR graph: expand, then every pass in :data:`PASSES`, verifying after each."""
    graph = verify(expand(network, network_file))
    for _name, step in PASSES:
        graph = verify(step(graph))
    return graph


def compile_spec(reference: str | Path, size: int | tuple[int, int] | None = None) -> Graph:
    """Load a network (a path or a built-in name) and lower it to a verified graph.

    ``size`` overrides the spec's input height and width (e.g. a small size for quick tests).
    """
    path = resolve_network(reference)
    network = load_network(path)
    if size is not None:
        network = with_input_size(network, size)
    return lower(network, path)


def with_input_size(network: Loaded[NetworkSpec], size: int | tuple[int, int]) -> Loaded[NetworkSpec]:
    spec = network.spec
    resized = spec.model_copy(update={"input": InputSpec(channels=spec.input.channels, size=size)})
    return Loaded(resized, network.source)
