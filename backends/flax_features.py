"""timm's ``features_only`` for generated Flax models: :class:`FlaxFeatureNet` runs the model's
stem and stages and returns the stage outputs (and the stem's, where its map is the stem's output)
chosen by ``out_indices``, NHWC as the model computes them."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rescompile.backends.flax_backend import feature_maps, stage_transitions
from rescompile.backends.surface import FeatureInfo, FeaturePoint
from rescompile.compiler.ir import Graph
from rescompile.spec.errors import RescompileError


class FlaxFeatureNet(nnx.Module):
    """The feature maps ``out_indices`` of ``model`` (a generated Flax model) as a list in network
    order, with timm's :class:`FeatureInfo`. The stem runs whole (its activations are functions,
    not modules), so a map inside the stem (ResNet's ``act1``) is torch-only."""

    def __init__(self, model: Any, graph: Graph, points: list[FeaturePoint], out_indices: tuple[int, ...]) -> None:
        stem_output = graph.modules[0].canonical(graph.modules[0].output)
        for index in out_indices:
            point = points[index]
            stage_ends = {*graph.stage_names(), *(module.path for module in graph.transitions if module.after_blocks)}
            if point.after not in stage_ends and point.after != stem_output:
                raise RescompileError(
                    f"{graph.name}'s feature map {index} ({point.module}) is inside the stem, which the Flax model "
                    f"runs whole: choose out_indices among the stage maps (from {index + 1}) or use backend torch"
                )
        self.model = model
        self.feature_info = nnx.data(FeatureInfo([point.as_dict() for point in points], out_indices))
        self.taps = tuple(points[index].after for index in sorted(out_indices))
        self.stem_output = stem_output
        self.transitions = stage_transitions(graph)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return feature_maps(self.model, x, self.transitions, self.stem_output, self.taps)


__all__ = ["FlaxFeatureNet"]
