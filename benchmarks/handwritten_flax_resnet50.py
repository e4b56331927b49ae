"""A plain ResNet-50 (torchvision's "v1.5": stride on the 3×3) written by hand in flax.nnx.

The baseline for ``flax_throughput.py``: what a Flax user would write without rescompile, with
flax's own ``nnx.BatchNorm``. It imports nothing from rescompile. Attribute names follow
torchvision's, so its state has the same paths as the generated model's and one can be loaded
into the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_features: int, out_features: int, kernel: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    # Explicit, symmetric padding as torch's: flax's "SAME" pads asymmetrically on even sizes.
    padding = kernel // 2
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel, kernel),
        strides=stride,
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        kernel_init=conv_init,
        rngs=rngs,
    )


def batch_norm(features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_features: int, width: int, stride: int, *, rngs: nnx.Rngs) -> None:
        out_features = width * self.expansion
        self.conv1 = conv(in_features, width, 1, 1, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = conv(width, width, 3, stride, rngs=rngs)
        self.bn2 = batch_norm(width, rngs=rngs)
        self.conv3 = conv(width, out_features, 1, 1, rngs=rngs)
        self.bn3 = batch_norm(out_features, rngs=rngs)
        downsample = None
        if stride != 1 or in_features != out_features:
            downsample = nnx.Sequential(
                conv(in_features, out_features, 1, stride, rngs=rngs), batch_norm(out_features, rngs=rngs)
            )
        self.downsample = downsample

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x if self.downsample is None else self.downsample(x)
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return nnx.relu(out + identity)


class ResNet50(nnx.Module):
    def __init__(self, num_classes: int = 1000, *, rngs: nnx.Rngs) -> None:
        self.conv1 = conv(3, 64, 7, 2, rngs=rngs)
        self.bn1 = batch_norm(64, rngs=rngs)
        in_features = 64
        stages = []
        for width, depth, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            blocks = []
            for index in range(depth):
                blocks.append(Bottleneck(in_features, width, stride if index == 0 else 1, rngs=rngs))
                in_features = width * Bottleneck.expansion
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC images -> logits."""
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
