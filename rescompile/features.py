"""timm's ``features_only`` models for generated torch models: :class:`FeatureListNet` runs a
model's ``forward_features`` layer by layer and returns the maps :class:`FeatureInfo` describes.

As timm's FeatureListNet, the model holds the generated model's own top-level layers under their
own names, up to the last map asked for (no head, no later stage), so its ``state_dict`` is timm's
features model's: ``conv1.weight``, ``layer1.0.conv1.weight``, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from rescompile.backends.surface import FeaturePoint


class FeatureInfo:
    """timm's FeatureInfo: the feature maps of a network (``num_chs``, ``reduction``, ``module``)
    and the ones chosen (``out_indices``). Each getter gives the chosen maps' values with no
    ``idx``, else those of map ``idx`` (an index or a sequence of them, into every map)."""

    def __init__(self, info: list[dict[str, int | str]], out_indices: tuple[int, ...]) -> None:
        self.info = info
        self.out_indices = out_indices

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        if idx is None:
            return [self.info[index][key] for index in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[index][key] for index in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> int | str | list[int | str]:
        return self.get("module", idx)

    def get_dicts(self) -> list[dict[str, int | str]]:
        return [self.info[index] for index in self.out_indices]

    def __getitem__(self, idx: int) -> dict[str, int | str]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)


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


__all__ = ["FeatureInfo", "FeatureListNet"]
