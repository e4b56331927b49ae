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
``efficientnet_cn`` (ConvBnAct, with ``_skip``).

Usage, e.g. timm's efficientnet_b2 (EfficientNet-B0's stages, width × 1.1, depth × 1.2)::

    python -m rescompile.efficientnet efficientnet_b2 --arch efficientnet --channel-multiplier 1.1 \
        --depth-multiplier 1.2 -o efficientnet_b2.yaml
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

ARCHITECTURES: dict[str, tuple[list[str], int, int]] = {
    "efficientnet": (
        [
            "ds_r1_k3_s1_e1_c16_se0.25",
            "ir_r2_k3_s2_e6_c24_se0.25",
            "ir_r2_k5_s2_e6_c40_se0.25",
            "ir_r3_k3_s2_e6_c80_se0.25",
            "ir_r3_k5_s1_e6_c112_se0.25",
            "ir_r4_k5_s2_e6_c192_se0.25",
            "ir_r1_k3_s1_e6_c320_se0.25",
        ],
        32,
        1280,
    ),
    "efficientnetv2_s": (
        [
            "cn_r2_k3_s1_e1_c24_skip",
            "er_r4_k3_s2_e4_c48",
            "er_r4_k3_s2_e4_c64",
            "ir_r6_k3_s2_e4_c128_se0.25",
            "ir_r9_k3_s1_e6_c160_se0.25",
            "ir_r15_k3_s2_e6_c256_se0.25",
        ],
        24,
        1280,
    ),
    "efficientnetv2_rw_s": (
        [
            "er_r2_k3_s1_e1_c24",
            "er_r4_k3_s2_e4_c48",
            "er_r4_k3_s2_e4_c64",
            "ir_r6_k3_s2_e4_c128_se0.25",
            "ir_r9_k3_s1_e6_c160_se0.25",
            "ir_r15_k3_s2_e6_c272_se0.25",
        ],
        24,
        1792,
    ),
}
"""timm's arch_def, stem size and head features of ``_gen_efficientnet`` (B0 to B7's stages) and
``_gen_efficientnetv2_s`` (``rw=False``: efficientnetv2_rw_t's; ``rw=True``: efficientnetv2_rw_s's)."""

BLOCKS = {"ds": "efficientnet_ds", "ir": "mbconv", "er": "fused_mbconv", "cn": "efficientnet_cn"}
"""timm's block type letter -> the built-in block with its keys."""

STEM_WIDTH, FEATURES = 32, 1280
"""The defaults of the ``timm_efficientnet`` stem's and head's widths: the written spec states them
only where they differ."""

TORCHVISION_STAGES = 7
"""torchvision's EfficientNet-B0 to B7 stages: the ``tv_efficientnet_head``'s conv is ``features.8``."""

_OPTION = re.compile(r"([a-z]+)(\d.*)")


@dataclass(frozen=True)
class Stage:
    block: str
    depth: int
    kernel: int
    stride: int
    expansion: float
    width: int
    se_ratio: float


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_stage(text: str, channel_multiplier: float, depth_multiplier: float) -> Stage:
    """One of timm's block strings as a stage, scaled: depth ``ceil(r × depth_multiplier)``, width
    ``make_divisible(c × channel_multiplier, 8)``. Options other than r, k, s, e, c, se and the
    skip that ``cn`` needs (``_skip``) are refused: the built-in blocks do not have them."""
    kind, *options = text.split("_")
    if kind not in BLOCKS:
        raise ValueError(f"{text!r}: block type {kind!r} is not one of {', '.join(BLOCKS)}")
    values: dict[str, float] = {}
    skip = False
    for option in options:
        match = _OPTION.fullmatch(option)
        if option == "skip":
            skip = True
        elif match is None or match[1] not in ("r", "k", "s", "e", "c", "se"):
            raise ValueError(f"{text!r}: option {option!r} is not supported (r, k, s, e, c, se, and skip for cn)")
        else:
            values[match[1]] = _number(match[2])
    if skip != (kind == "cn"):
        raise ValueError(f"{text!r}: cn blocks need '_skip' and the others add their input where shapes match")
    if any(key not in values for key in "rksc"):
        raise ValueError(f"{text!r}: needs r (repeats), k (kernel), s (stride) and c (channels)")
    return Stage(
        block=BLOCKS[kind],
        depth=math.ceil(values["r"] * depth_multiplier),
        kernel=int(values["k"]),
        stride=int(values["s"]),
        expansion=values.get("e", 1),
        width=int(make_divisible(values["c"] * channel_multiplier, 8)),
        se_ratio=values.get("se", 0),
    )


def _stage_line(stage: Stage, network_block: str) -> str:
    parameters = [f"kernel: {stage.kernel}"]
    if stage.block in ("mbconv", "fused_mbconv", "tv_mbconv"):
        parameters.append(f"expansion: {stage.expansion}")
    if stage.block in ("mbconv", "fused_mbconv", "efficientnet_ds"):
        parameters.append(f"se_ratio: {stage.se_ratio}")
    stride = f", stride: {stage.stride}" if stage.stride != 1 else ""
    block = f", block: {stage.block}" if stage.block != network_block else ""
    own = f"block_parameters: {{{', '.join(parameters)}}}"
    return f"  - {{depth: {stage.depth}, width: {stage.width}{stride}{block}, {own}}}"


def _torchvision_stage(stage: Stage, text: str) -> Stage:
    """``stage`` as torchvision's MBConv (``tv_mbconv``), whose SE is a quarter of the block input."""
    if stage.block not in ("efficientnet_ds", "mbconv") or stage.se_ratio != 0.25:
        raise ValueError(f"{text!r}: torchvision's EfficientNet has ds and ir stages with se0.25 only")
    return Stage("tv_mbconv", stage.depth, stage.kernel, stage.stride, stage.expansion, stage.width, stage.se_ratio)


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
        *(_stage_line(stage, "tv_mbconv") for stage in stages),
        "head: tv_efficientnet_head",
        *([f"head_parameters: {{features: {features}, stage: {len(stages) + 1}}}"] if features != FEATURES else []),
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
) -> str:
    """A network spec (YAML text) with timm's keys (``conv_stem``, ``blocks.0.0.conv_dw``,
    ``conv_head``, ``classifier``): the ``timm_efficientnet`` stem and head with SiLU, a stage per block string, an
    input added only where shapes match; with ``keys="torchvision"``, torchvision's
    (``features.1.0.block.0.0``)."""
    scaled = [parse_stage(text, channel_multiplier, depth_multiplier) for text in stages]

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
        *(_stage_line(stage, "mbconv") for stage in scaled),
        "head: timm_efficientnet",
        f"head_parameters: {{{head_width_entry}act: silu}}",
    ]
    if keys == "torchvision":
        tv_stages = [_torchvision_stage(stage, text) for stage, text in zip(scaled, stages, strict=True)]
        body = _torchvision_lines(tv_stages, width(stem_width))
    lines = [
        "# yaml-language-server: $schema=schemas/network.schema.json",
        "# Written by rescompile.efficientnet (EfficientNet's compound scaling, as timm and torchvision compute it)",
        f"# from width × {channel_multiplier}, depth × {depth_multiplier}, stem {stem_width}, head {features}"
        " and timm's stages:",
        f"#   {command}" if command else "#",
        f"name: {name}",
        f"description: EfficientNet (width × {channel_multiplier}, depth × {depth_multiplier}), {reference} "
        f"{name.removeprefix('tv_') if keys == 'torchvision' else name}.",
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
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="timm's stages, stem and head of this family")
    parser.add_argument("--stage", action="append", default=[], help="a stage as timm's block string (repeatable)")
    parser.add_argument("--stem-width", type=int, help="stem channels before the multiplier (default: the arch's)")
    parser.add_argument("--features", type=int, help="head channels before the multiplier (default: the arch's)")
    parser.add_argument("--channel-multiplier", type=float, default=1.0, help="width scale (B1: 1.0, B2: 1.1, ...)")
    parser.add_argument("--depth-multiplier", type=float, default=1.0, help="depth scale (B1: 1.1, B2: 1.2, ...)")
    parser.add_argument(
        "--keys", choices=("timm", "torchvision"), default="timm", help="whose state_dict keys (default: timm's)"
    )
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default: stdout)")
    options = parser.parse_args(arguments)
    stages, stem_width, features = ARCHITECTURES[options.arch] if options.arch else ([], None, None)
    stages = options.stage or stages
    stem_width = options.stem_width or stem_width
    features = options.features or features
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
        ),
        options.output,
    )


if __name__ == "__main__":
    sys.exit(main())
