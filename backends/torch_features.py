"""timm's ``features_only`` models for generated torch models: :class:`FeatureListNet` runs a
model's ``forward_features`` layer by layer and returns the maps :class:`FeatureInfo` describes.

As timm's FeatureListNet, the model holds the generated model's own top-level layers under their
own names, up to the last map asked for (no head, no later stage), so its ``state_dict`` is timm's
features model's: ``conv1.weight``, ``layer1.0.conv1.weight``, ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from rescompile.backends.surface import FeatureInfo

if TYPE_CHECKING:
    from rescompile.backends.surface import FeaturePoint


class FeatureListNet(nn.Module):
    """The feature maps ``out_indices`` of ``model`` (a generated torch model), as a list in network
    order: ``paths`` are the module paths its ``forward_features`` calls in order, one input each,
    and each map is taken after the path its :class:`FeaturePoint` names."""

    def __init__(
        self, model: nn.Module, paths: list[str], points: list[FeaturePoint], out_indices: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.feature_info = FeatureInfo([point.as_dict() for point in points], out_indices)
        taps = sorted(paths.index(points[index].after) for index in out_indices)
        self.paths = paths[: taps[-1] + 1]
        self.taps = set(taps)
        for path in self.paths:
            name = path.split(".")[0]
            if name not in self._modules:
                self.add_module(name, model.get_submodule(name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for index, path in enumerate(self.paths):
            x = self.get_submodule(path)(x)
            if index in self.taps:
                features.append(x)
        return features


__all__ = ["FeatureListNet"]
