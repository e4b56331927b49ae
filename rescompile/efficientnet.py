"""EfficientNet's compound scaling (Tan and Le 2019, section 3.3; EfficientNetV2, Tan and Le 2021),
computed as timm's ``_gen_efficientnet`` and ``decode_arch_def`` compute it, and written out as an
ordinary network spec.

NOTE: a generator, not spec-language functions, for the reason ``rescompile.regnet`` gives: the
rule decides each stage's *depth* (``ceil(repeats × depth_multiplier)``), and a spec's stages are
data. Its inputs are timm's own: the stages as timm's block strings (``ir_r2_k3_s2_e6_c24_se0.25``:
block type, repeats, kernel, stride, expansion, channels, SE ratio), a channel and a depth
multiplier, the stem's width and the head's features (both before the channel multiplier). Widths
are ``make_divisible(channels × multiplier, 8)`` (timm's ``round_channels``). The block types map
to built-in blocks with timm's keys: ``ds`` -> ``efficientnet_ds`` (DepthwiseSeparableConv), ``ir``
-> ``mbconv`` (InvertedResidual), ``er`` -> ``fused_mbconv`` (EdgeResidual), ``cn`` ->
``efficientnet_cn`` (ConvBnAct, with ``_skip``). A stage may hold several strings, joined by
commas (``ir_r1_k3_s2_e4_c24_nre,ir_r1_k3_s1_e3_c24_nre``): what its blocks do not share is
written as ``per_block_parameters``.

MobileNetV3 (Howard et al. 2019; ``--arch mobilenetv3_large`` or ``mobilenetv3_small``) is timm's
``_gen_mobilenet_v3`` with the same decoding: ``ds`` -> ``timm_depthwise_separable``, ``ir`` ->
``timm_inverted_residual``, ``cn`` -> ``timm_conv_bn_act``, hardswish or, where a string says
``nre``, ReLU; hard-sigmoid SE gates; the stem unscaled below a multiplier of 0.75 and the head's
features never scaled, as timm's.

Usage, e.g. timm's efficientnet_b2 (EfficientNet-B0's stages, width × 1.1, depth × 1.2)::

    python -m rescompile.efficientnet efficientnet_b2 --arch efficientnet --channel-multiplier 1.1 \
        --depth-multiplier 1.2 -o efficientnet_b2.yaml
    python -m rescompile.efficientnet mobilenetv3_large_075 --arch mobilenetv3_large --channel-multiplier 0.75
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from rescompile.regnet import write_spec
from rescompile.spec.expressions import make_divisible


@dataclass(frozen=True)
class Architecture:
    """timm's arch_def of a family, each stage its block strings joined by commas, the stem size and
    the head's features (both before the channel multiplier), and the name its description gives."""

    stages: tuple[str, ...]
    stem_width: int
    features: int
    family: str = "efficientnet"
    title: str = "EfficientNet"


ARCHITECTURES = {
    "efficientnet": Architecture(
        (
            "ds_r1_k3_s1_e1_c16_se0.25",
            "ir_r2_k3_s2_e6_c24_se0.25",
            "ir_r2_k5_s2_e6_c40_se0.25",
            "ir_r3_k3_s2_e6_c80_se0.25",
            "ir_r3_k5_s1_e6_c112_se0.25",
            "ir_r4_k5_s2_e6_c192_se0.25",
            "ir_r1_k3_s1_e6_c320_se0.25",
        ),
        32,
        1280,
    ),
    "efficientnetv2_s": Architecture(
        (
            "cn_r2_k3_s1_e1_c24_skip",
            "er_r4_k3_s2_e4_c48",
            "er_r4_k3_s2_e4_c64",
            "ir_r6_k3_s2_e4_c128_se0.25",
            "ir_r9_k3_s1_e6_c160_se0.25",
            "ir_r15_k3_s2_e6_c256_se0.25",
        ),
        24,
        1280,
    ),
    "efficientnetv2_rw_s": Architecture(
        (
            "er_r2_k3_s1_e1_c24",
            "er_r4_k3_s2_e4_c48",
            "er_r4_k3_s2_e4_c64",
            "ir_r6_k3_s2_e4_c128_se0.25",
            "ir_r9_k3_s1_e6_c160_se0.25",
            "ir_r15_k3_s2_e6_c272_se0.25",
        ),
        24,
        1792,
    ),
    "mobilenetv3_large": Architecture(
        (
            "ds_r1_k3_s1_e1_c16_nre",
            "ir_r1_k3_s2_e4_c24_nre,ir_r1_k3_s1_e3_c24_nre",
            "ir_r3_k5_s2_e3_c40_se0.25_nre",
            "ir_r1_k3_s2_e6_c80,ir_r1_k3_s1_e2.5_c80,ir_r2_k3_s1_e2.3_c80",
            "ir_r2_k3_s1_e6_c112_se0.25",
            "ir_r3_k5_s2_e6_c160_se0.25",
            "cn_r1_k1_s1_c960",
        ),
        16,
        1280,
        "mobilenetv3",
        "MobileNetV3-Large",
    ),
    "mobilenetv3_small": Architecture(
        (
            "ds_r1_k3_s2_e1_c16_se0.25_nre",
            "ir_r1_k3_s2_e4.5_c24_nre,ir_r1_k3_s1_e3.67_c24_nre",
            "ir_r1_k5_s2_e4_c40_se0.25,ir_r2_k5_s1_e6_c40_se0.25",
            "ir_r2_k5_s1_e3_c48_se0.25",
            "ir_r3_k5_s2_e6_c96_se0.25",
            "cn_r1_k1_s1_c576",
        ),
        16,
        1024,
        "mobilenetv3",
        "MobileNetV3-Small",
    ),
}
"""timm's arch_def, stem size and head features of ``_gen_efficientnet`` (B0 to B7's stages),
``_gen_efficientnetv2_s`` (``rw=False``: efficientnetv2_rw_t's; ``rw=True``: efficientnetv2_rw_s's)
and ``_gen_mobilenet_v3`` (large and small, not the minimal variants)."""

BLOCKS = {
    "efficientnet": {"ds": "efficientnet_ds", "ir": "mbconv", "er": "fused_mbconv", "cn": "efficientnet_cn"},
    "mobilenetv3": {"ds": "timm_depthwise_separable", "ir": "timm_inverted_residual", "cn": "timm_conv_bn_act"},
}
"""Per family, timm's block type letter -> the built-in block with its keys: EfficientNet's
(``_gen_efficientnet``: SiLU, SE from the block input, drop path) and MobileNetV3's (hardswish, or
ReLU where a string says ``nre``; a hard-sigmoid SE of make_divisible(hidden × ratio, 8))."""

STEM_WIDTH, FEATURES = 32, 1280
"""The defaults of the ``timm_efficientnet`` stem's and head's widths: the written spec states them
only where they differ."""

TORCHVISION_STAGES = 7
"""torchvision's EfficientNet-B0 to B7 stages: the ``tv_efficientnet_head``'s conv is ``features.8``."""

FIXED_STEM_BELOW = 0.75
"""timm's ``_gen_mobilenet_v3`` leaves the stem at 16 channels below this channel multiplier."""

_OPTION = re.compile(r"([a-z]+)(\d.*)")


@dataclass(frozen=True)
class BlockString:
    """One of timm's block strings, unscaled."""

    text: str
    kind: str
    repeats: int
    kernel: int
    stride: int
    expansion: float
    channels: float
    se_ratio: float
    relu: bool  # ``nre``: ReLU instead of the family's activation


@dataclass(frozen=True)
class Stage:
    block: str
    width: int
    stride: int
    blocks: tuple[BlockString, ...]  # a string per block, repeats unrolled

    @property
    def depth(self) -> int:
        return len(self.blocks)


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_block_string(text: str, family: str) -> BlockString:
    """One of timm's block strings (``ir_r2_k3_s2_e6_c24_se0.25_nre``). Options other than r, k, s,
    e, c, se, nre and the skip that EfficientNet's ``cn`` needs (``_skip``) are refused: the
    built-in blocks do not have them."""
    kind, *options = text.split("_")
    if kind not in BLOCKS[family]:
        raise ValueError(f"{text!r}: block type {kind!r} is not one of {', '.join(BLOCKS[family])}")
    values: dict[str, float] = {}
    skip = relu = False
    for option in options:
        match = _OPTION.fullmatch(option)
        if option in ("skip", "nre"):
            skip, relu = skip or option == "skip", relu or option == "nre"
        elif match is None or match[1] not in ("r", "k", "s", "e", "c", "se"):
            raise ValueError(f"{text!r}: option {option!r} is not supported (r, k, s, e, c, se, nre, and skip for cn)")
        else:
            values[match[1]] = _number(match[2])
    if family == "efficientnet" and skip != (kind == "cn"):
        raise ValueError(f"{text!r}: cn blocks need '_skip' and the others add their input where shapes match")
    if family == "mobilenetv3" and skip:
        raise ValueError(f"{text!r}: MobileNetV3's blocks add their input where shapes match, its cn never")
    if relu and kind == "er":
        raise ValueError(f"{text!r}: 'nre' is not supported by er blocks (fused_mbconv is SiLU only)")
    if any(key not in values for key in "rksc"):
        raise ValueError(f"{text!r}: needs r (repeats), k (kernel), s (stride) and c (channels)")
    return BlockString(
        text,
        kind,
        int(values["r"]),
        int(values["k"]),
        int(values["s"]),
        values.get("e", 1),
        values["c"],
        values.get("se", 0),
        relu,
    )


def scale_depths(repeats: list[int], depth_multiplier: float) -> list[int]:
    """timm's ``_scale_stage_depth`` (``depth_trunc='ceil'``): the stage's ``ceil(sum × multiplier)``
    blocks shared out among its strings from the last, each keeping one at least."""
    remaining, scaled_remaining = sum(repeats), math.ceil(sum(repeats) * depth_multiplier)
    scaled: list[int] = []
    for count in reversed(repeats):
        share = max(1, round(count / remaining * scaled_remaining))
        scaled.append(share)
        remaining, scaled_remaining = remaining - count, scaled_remaining - share
    return scaled[::-1]


def parse_stage(text: str, channel_multiplier: float, depth_multiplier: float, family: str) -> Stage:
    """A stage of timm's block strings joined by commas, scaled as timm's ``decode_arch_def`` scales
    it: depth ``ceil(r × depth_multiplier)`` shared among the strings, width
    ``make_divisible(c × channel_multiplier, 8)``. Its strings share one block type and width, and
    only the first has a stride (the spec's stage carries it)."""
    strings = [parse_block_string(part, family) for part in text.split(",")]
    first = strings[0]
    for string in strings[1:]:
        if (string.kind, string.channels) != (first.kind, first.channels) or string.stride != 1:
            raise ValueError(f"{text!r}: a stage's strings share a block type and width, the first its stride")
    repeats = scale_depths([string.repeats for string in strings], depth_multiplier)
    return Stage(
        block=BLOCKS[family][first.kind],
        width=int(make_divisible(first.channels * channel_multiplier, 8)),
        stride=first.stride,
        blocks=tuple(string for string, count in zip(strings, repeats, strict=True) for _ in range(count)),
    )


def _block_parameters(block: str, string: BlockString, family: str) -> dict[str, float | str]:
    """What one block of ``block`` states: its kernel, expansion and SE ratio where the block has
    them, and its activation: MobileNetV3's always (the blocks' default is ReLU), EfficientNet's
    where a string says ``nre``."""
    parameters: dict[str, float | str] = {"kernel": string.kernel}
    if block in ("mbconv", "fused_mbconv", "tv_mbconv", "timm_inverted_residual"):
        parameters["expansion"] = string.expansion
    if family == "mobilenetv3":
        parameters["act"] = "relu" if string.relu else "hardswish"
        if string.se_ratio and block != "timm_conv_bn_act":
            parameters["se_ratio"] = string.se_ratio
        if string.se_ratio and block == "timm_depthwise_separable":
            parameters["se_gate"] = "hardsigmoid"  # the network's block_parameters are the network block's
        return parameters
    if block in ("mbconv", "fused_mbconv", "efficientnet_ds"):
        parameters["se_ratio"] = string.se_ratio
    if string.relu:
        parameters["act"] = "relu"
    return parameters


def _mapping(parameters: dict[str, float | str]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in parameters.items()) + "}"


def _stage_line(stage: Stage, network_block: str, family: str) -> str:
    """The stage as one line: the parameters its blocks share in ``block_parameters``, the others
    in ``per_block_parameters``."""
    each = [_block_parameters(stage.block, string, family) for string in stage.blocks]
    shared = {key: value for key, value in each[0].items() if all(own.get(key, None) == value for own in each)}
    stride = f", stride: {stage.stride}" if stage.stride != 1 else ""
    block = f", block: {stage.block}" if stage.block != network_block else ""
    own = f", block_parameters: {_mapping(shared)}" if shared else ""
    varying = [{key: value for key, value in parameters.items() if key not in shared} for parameters in each]
    per_block = f", per_block_parameters: [{', '.join(map(_mapping, varying))}]" if any(varying) else ""
    return f"  - {{depth: {stage.depth}, width: {stage.width}{stride}{block}{own}{per_block}}}"


def _torchvision_stage(stage: Stage, text: str) -> Stage:
    """``stage`` as torchvision's MBConv (``tv_mbconv``), whose SE is a quarter of the block input."""
    if stage.block not in ("efficientnet_ds", "mbconv") or any(
        string.se_ratio != 0.25 or string.relu for string in stage.blocks
    ):
        raise ValueError(f"{text!r}: torchvision's EfficientNet has ds and ir stages with se0.25 only")
    return Stage("tv_mbconv", stage.width, stage.stride, stage.blocks)


def _torchvision_lines(stages: list[Stage], stem_width: int) -> list[str]:
    """The spec's body with torchvision's keys: ``features.0`` (stem), ``features.1`` ... (stages),
    ``features.N`` (the head's conv to 4 × the last width, torchvision's rule), ``classifier.1``.
    Without stochastic depth, as every built-in (torchvision's default is 0.2:
    ``block_parameters: {drop_path_rate: 0.2}``); its classifier's dropout is not written."""
    features = 4 * stages[-1].width
    if len(stages) != TORCHVISION_STAGES:
        raise ValueError(f"torchvision's EfficientNet has {TORCHVISION_STAGES} stages, not {len(stages)}")
    return [
        'naming: {stages: "features.{number}"}',
        "stem: tv_efficientnet",
        *([f"stem_parameters: {{width: {stem_width}}}"] if stem_width != STEM_WIDTH else []),
        "block: tv_mbconv",
        "shortcut: {where_shapes_match: identity, where_shapes_change: none}",
        "stages:",
        *(_stage_line(stage, "tv_mbconv", "efficientnet") for stage in stages),
        "head: tv_efficientnet_head",
        *([f"head_parameters: {{features: {features}, stage: {len(stages) + 1}}}"] if features != FEATURES else []),
    ]


def _mobilenetv3_lines(stages: list[Stage], texts: list[str], stem_width: int, features: int) -> list[str]:
    """The spec's body as timm's ``MobileNetV3`` builds it: the ``timm_efficientnet`` stem with
    hardswish, hard-sigmoid SE gates, the ``timm_mobilenetv3`` head (pool, then a 1×1 conv with
    bias) of ``features`` channels, not scaled. timm's ConvBnAct (``cn``) adds no input without
    ``_skip``, and the spec's block adds it where shapes match: such a stage is refused."""
    inputs = stem_width
    for stage, text in zip(stages, texts, strict=True):
        if stage.block == "timm_conv_bn_act" and (stage.depth > 1 or (stage.stride, stage.width) == (1, inputs)):
            raise ValueError(f"{text!r}: MobileNetV3's cn adds no input: its blocks must change the shape")
        inputs = stage.width
    return [
        'naming: {stages: "blocks.{index}"}',
        "stem: timm_efficientnet",
        f"stem_parameters: {{width: {stem_width}, act: hardswish}}",
        "block: timm_inverted_residual",
        "block_parameters: {se_gate: hardsigmoid}",
        "shortcut: {where_shapes_match: identity, where_shapes_change: none}",
        "stages:",
        *(_stage_line(stage, "timm_inverted_residual", "mobilenetv3") for stage in stages),
        "head: timm_mobilenetv3",
        *([f"head_parameters: {{width: {features}}}"] if features != FEATURES else []),
    ]


def efficientnet_spec(
    name: str,
    stages: list[str],
    stem_width: int,
    features: int,
    channel_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    command: str = "",
    keys: str = "timm",
    architecture: Architecture | None = None,
) -> str:
    """A network spec (YAML text) with timm's keys (``conv_stem``, ``blocks.0.0.conv_dw``,
    ``conv_head``, ``classifier``): for EfficientNet, the ``timm_efficientnet`` stem and head with
    SiLU, a stage per block string, an input added only where shapes match; with
    ``keys="torchvision"``, torchvision's (``features.1.0.block.0.0``); for MobileNetV3 (the
    ``architecture``'s family), timm's ``_gen_mobilenet_v3``'s."""
    family = architecture.family if architecture else "efficientnet"
    title = architecture.title if architecture else "EfficientNet"
    scaled = [parse_stage(text, channel_multiplier, depth_multiplier, family) for text in stages]

    def width(channels: int) -> int:
        return int(make_divisible(channels * channel_multiplier, 8))

    reference = "timm's" if keys == "timm" else "torchvision's"
    stem_width_entry = f"width: {width(stem_width)}, " if width(stem_width) != STEM_WIDTH else ""
    head_width_entry = f"width: {width(features)}, " if width(features) != FEATURES else ""
    body = [
        'naming: {stages: "blocks.{index}"}',
        "stem: timm_efficientnet",
        f"stem_parameters: {{{stem_width_entry}act: silu}}",
        "block: mbconv",
        "shortcut: {where_shapes_match: identity, where_shapes_change: none}",
        "stages:",
        *(_stage_line(stage, "mbconv", family) for stage in scaled),
        "head: timm_efficientnet",
        f"head_parameters: {{{head_width_entry}act: silu}}",
    ]
    heading = "EfficientNet's compound scaling, as timm and torchvision compute it"
    description = f"{title} (width × {channel_multiplier}, depth × {depth_multiplier}), {reference} "
    if family == "mobilenetv3":
        if keys == "torchvision":
            raise ValueError("MobileNetV3 is written with timm's keys only")
        stem = stem_width if channel_multiplier < FIXED_STEM_BELOW else width(stem_width)
        body = _mobilenetv3_lines(scaled, stages, stem, features)
        heading = "MobileNetV3's stages, as timm's _gen_mobilenet_v3 scales them"
        depth = f", depth × {depth_multiplier}" if depth_multiplier != 1 else ""
        description = f"{title} {channel_multiplier}{depth} (Howard et al. 2019), {reference} "
    if keys == "torchvision":
        tv_stages = [_torchvision_stage(stage, text) for stage, text in zip(scaled, stages, strict=True)]
        body = _torchvision_lines(tv_stages, width(stem_width))
    lines = [
        "# yaml-language-server: $schema=schemas/network.schema.json",
        f"# Written by rescompile.efficientnet ({heading})",
        f"# from width × {channel_multiplier}, depth × {depth_multiplier}, stem {stem_width}, head {features}"
        " and timm's stages:",
        f"#   {command}" if command else "#",
        f"name: {name}",
        f"description: {description}{name.removeprefix('tv_') if keys == 'torchvision' else name}.",
        "input: {channels: 3, size: 224}",
        *body,
    ]
    return "\n".join(lines) + "\n"


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rescompile.efficientnet",
        description="Write the network spec of an EfficientNet (Tan and Le 2019, 2021) from timm's block strings.",
    )
    parser.add_argument("name", help="the network's name (timm's: efficientnet_b1, efficientnetv2_rw_t, ...)")
    parser.add_argument(
        "--arch", choices=sorted(ARCHITECTURES), help="timm's stages, stem and head of this family (and its blocks)"
    )
    parser.add_argument(
        "--stage", action="append", default=[], help="a stage as timm's block strings, joined by commas (repeatable)"
    )
    parser.add_argument("--stem-width", type=int, help="stem channels before the multiplier (default: the arch's)")
    parser.add_argument("--features", type=int, help="head channels before the multiplier (default: the arch's)")
    parser.add_argument("--channel-multiplier", type=float, default=1.0, help="width scale (B1: 1.0, B2: 1.1, ...)")
    parser.add_argument("--depth-multiplier", type=float, default=1.0, help="depth scale (B1: 1.1, B2: 1.2, ...)")
    parser.add_argument(
        "--keys", choices=("timm", "torchvision"), default="timm", help="whose state_dict keys (default: timm's)"
    )
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default: stdout)")
    options = parser.parse_args(arguments)
    architecture = ARCHITECTURES[options.arch] if options.arch else None
    stages = options.stage or (list(architecture.stages) if architecture else [])
    stem_width = options.stem_width or (architecture.stem_width if architecture else None)
    features = options.features or (architecture.features if architecture else None)
    if not stages or stem_width is None or features is None:
        print("rescompile.efficientnet: give --arch, or --stage (each), --stem-width and --features", file=sys.stderr)
        return 1
    words = [options.name] + (["--arch", options.arch] if options.arch else [])
    words += [word for text in options.stage for word in ("--stage", text)]
    words += ["--stem-width", str(options.stem_width)] if options.stem_width else []
    words += ["--features", str(options.features)] if options.features else []
    words += ["--channel-multiplier", str(options.channel_multiplier)] if options.channel_multiplier != 1 else []
    words += ["--depth-multiplier", str(options.depth_multiplier)] if options.depth_multiplier != 1 else []
    words += ["--keys", options.keys] if options.keys != "timm" else []
    command = "python -m rescompile.efficientnet " + shlex.join(words)
    return write_spec(
        "rescompile.efficientnet",
        lambda: efficientnet_spec(
            options.name,
            stages,
            stem_width,
            features,
            options.channel_multiplier,
            options.depth_multiplier,
            command,
            options.keys,
            architecture,
        ),
        options.output,
    )


if __name__ == "__main__":
    sys.exit(main())
