"""RegNet's quantised linear widths (Radosavovic et al. 2020, "Designing Network Design Spaces",
section 3.3), computed exactly as timm's ``generate_regnet`` and ``adjust_widths_groups_comp``, and
written out as an ordinary network spec.

NOTE: a generator, not spec-language functions. The rule turns four numbers into the *number* of
stages and each stage's depth (block ``j`` gets width ``w0 + wa·j``, snapped to ``w0·wm^k`` and to a
multiple of 8; consecutive blocks of one width form a stage), while a spec's ``stages`` is a list
whose length and depths are data, and its expressions are scalars over part parameters. Computing
the list in the language would need list-valued expressions that make the network's structure
depend on floating-point arithmetic at load time; writing the list once keeps every spec plain YAML
that ``validate`` and the schema check as they check any other, and the written file says which
numbers made it. The arithmetic follows timm's in float32 (its ``torch.arange``, ``log``, ``pow``
and ``round``), so boundary cases round as timm's do (tests compare it with timm's zoo).

Usage, e.g. RegNetY-1.6GF from the paper's table (another RegNet is another w0, wa, wm, depth and
group width)::

    python -m rescompile.regnet regnety_016 --w0 48 --wa 20.71 --wm 2.65 --depth 27 --group-width 24 \
        --se-ratio 0.25 -o regnety_016.yaml
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rescompile.spec.expressions import make_divisible

QUANTUM = 8
"""Block widths are multiples of this (the paper's q = 8)."""


@dataclass(frozen=True)
class Stage:
    depth: int
    width: int
    group_width: int


def regnet_stages(
    w0: int, wa: float, wm: float, depth: int, group_width: int, bottle_ratio: float = 1.0, group_min_ratio: float = 0.0
) -> list[Stage]:
    """The stages of a RegNet: per-block widths ``u_j = w0 + wa·j`` (``j < depth``), each snapped
    to ``w0·wm^round(log(u_j / w0) / log(wm))`` and to a multiple of :data:`QUANTUM`; blocks of one
    width form a stage (in increasing width). Then, per stage, the group width is at most the
    bottleneck width (``width × bottle_ratio``), and the bottleneck width is rounded to a multiple
    of the group width (timm's ``quantize_float``; with ``group_min_ratio``, torchvision's rounding,
    timm's ``make_divisible`` with that minimum, as its ``*_tv`` models)."""
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % QUANTUM == 0 and depth > 0 and group_width > 0):
        raise ValueError("RegNet needs wa >= 0, w0 > 0 a multiple of 8, wm > 1, depth > 0 and group_width > 0")
    f32 = np.float32
    continuous = np.arange(depth, dtype=f32) * f32(wa) + f32(w0)
    exponents = np.round(np.log(continuous / f32(w0)) / f32(math.log(wm)))
    widths = np.round(f32(w0) * np.power(f32(wm), exponents, dtype=f32) / f32(QUANTUM)) * f32(QUANTUM)
    stage_widths, stage_depths = np.unique(widths.astype(np.int64), return_counts=True)
    stages: list[Stage] = []
    for width, count in zip(stage_widths.tolist(), stage_depths.tolist(), strict=True):
        bottleneck = int(width * bottle_ratio)
        groups = min(group_width, bottleneck)
        if group_min_ratio:
            bottleneck = int(make_divisible(bottleneck, groups, group_min_ratio))
        else:
            bottleneck = int(round(bottleneck / groups) * groups)
        stages.append(Stage(depth=count, width=int(bottleneck / bottle_ratio), group_width=groups))
    return stages


def regnet_spec(
    name: str,
    w0: int,
    wa: float,
    wm: float,
    depth: int,
    group_width: int,
    se_ratio: float = 0.0,
    command: str = "",
    bottle_ratio: float = 1.0,
    group_min_ratio: float = 0.0,
) -> str:
    """A network spec (YAML text) for the RegNet of these numbers, with timm's keys (``s1.b1``):
    the ``regnet`` stem, ``regnet_x`` blocks (``regnet_y`` with squeeze-and-excitation where
    ``se_ratio`` is set), ``conv_bn_projection`` where shapes change, and every stage stride 2."""
    stages = regnet_stages(w0, wa, wm, depth, group_width, bottle_ratio, group_min_ratio)
    block = "regnet_y" if se_ratio else "regnet_x"
    parameters = f"{{group_width: {group_width}"
    parameters += (f", bottle_ratio: {bottle_ratio}" if bottle_ratio != 1 else "") + (
        f", se_ratio: {se_ratio}}}" if se_ratio else "}"
    )
    lines = [
        "# yaml-language-server: $schema=schemas/network.schema.json",
        "# Written by rescompile.regnet (the quantised linear widths of Radosavovic et al. 2020, as timm computes",
        f"# them) from w0={w0}, wa={wa}, wm={wm}, depth={depth}, group width {group_width}"
        + (f", SE ratio {se_ratio}:" if se_ratio else ":"),
        f"#   {command}" if command else "#",
        f"name: {name}",
        f"description: RegNet{'Y' if se_ratio else 'X'} (w0={w0}, wa={wa}, wm={wm}, depth={depth}, "
        f"group width {group_width}), timm's {name}.",
        "input: {channels: 3, size: 224}",
        'naming: {stages: "s{number}", blocks: "b{number}"}',
        "stem: regnet",
        f"block: {block}",
        f"block_parameters: {parameters}",
        "shortcut: {where_shapes_match: identity, where_shapes_change: conv_bn_projection}",
        "stages:",
    ]
    for stage in stages:
        own = f", block_parameters: {{group_width: {stage.group_width}}}" if stage.group_width != group_width else ""
        lines.append(f"  - {{depth: {stage.depth}, width: {stage.width}, stride: 2{own}}}")
    lines += ["head: regnet_head", "head_parameters: {classes: 1000}"]
    return "\n".join(lines) + "\n"


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rescompile.regnet",
        description="Write the network spec of a RegNet (Radosavovic et al. 2020) from its parameters.",
    )
    parser.add_argument("name", help="the network's name (timm's: regnetx_016, regnety_032, ...)")
    parser.add_argument("--w0", type=int, required=True, help="initial width (a multiple of 8)")
    parser.add_argument("--wa", type=float, required=True, help="width slope")
    parser.add_argument("--wm", type=float, required=True, help="width multiplier between stages (> 1)")
    parser.add_argument("--depth", type=int, required=True, help="blocks in all stages together")
    parser.add_argument("--group-width", type=int, required=True, help="channels per group of the 3×3 conv")
    parser.add_argument("--se-ratio", type=float, default=0.0, help="squeeze-and-excitation ratio (RegNetY: 0.25)")
    parser.add_argument("--bottle-ratio", type=float, default=1.0, help="bottleneck width / block width")
    parser.add_argument(
        "--group-min-ratio", type=float, default=0.0, help="torchvision's rounding of bottleneck widths (timm's *_tv)"
    )
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default: stdout)")
    options = parser.parse_args(arguments)
    words = [options.name, "--w0", str(options.w0), "--wa", str(options.wa), "--wm", str(options.wm)]
    words += ["--depth", str(options.depth), "--group-width", str(options.group_width)]
    words += ["--se-ratio", str(options.se_ratio)] if options.se_ratio else []
    words += ["--bottle-ratio", str(options.bottle_ratio)] if options.bottle_ratio != 1 else []
    words += ["--group-min-ratio", str(options.group_min_ratio)] if options.group_min_ratio else []
    command = "python -m rescompile.regnet " + shlex.join(words)
    return write_spec(
        "rescompile.regnet",
        lambda: regnet_spec(
            options.name,
            options.w0,
            options.wa,
            options.wm,
            options.depth,
            options.group_width,
            options.se_ratio,
            command,
            options.bottle_ratio,
            options.group_min_ratio,
        ),
        options.output,
    )


def write_spec(program: str, make: Callable[[], str], output: Path | None) -> int:
    """A generator's end (this one's and ``rescompile.efficientnet``'s): the spec ``make`` writes,
    to ``output`` or stdout, and 0; or, where its numbers are impossible (a ValueError), one line
    naming ``program`` on stderr and 1."""
    try:
        text = make()
    except ValueError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 1
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
