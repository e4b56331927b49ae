"""Mutation fuzzing of the spec front end: does every input give a located line or a graph?

Each input is a copy of the built-in networks and parts with one file mutated (its keys, value
types, values, bytes or YAML structure), compiled as ``rescompile validate`` does (load, lower,
cost) in this process. Each outcome is one of

- ``located``: a :class:`RescompileError` whose text is one ``file:LINE:COL: message`` line;
- ``accepted``: a graph;
- ``defect``: any other exception, a message without a location or on two lines, or a run over
  :data:`HANG_SECONDS` (a hang).

The default test suite runs a bounded, seeded sample (tests/fuzz/test_fuzz.py). A long run::

    .venv/bin/python -m tests.fuzz.run --inputs 100000 [--seed 1] [--save defects/]

prints the counts and one line per defect kind; ``--save`` writes each defect's input folder.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock

import yaml

from rescompile.compiler.cost import cost
from rescompile.compiler.pipeline import compile_spec
from rescompile.spec import RescompileError, builtin_directory, loader
from rescompile.spec.yaml_source import YamlDocument, read_yaml

HANG_SECONDS = 10.0
"""CPU seconds (the process's own, so that a machine shared with other work does not make hangs):
generous, since the largest legal networks (10,000 blocks; 500,000 nodes) lower and cost in about
2.5 and 6 s."""
WALL_SECONDS = 300.0
"""The wall's limit, for a hang that uses no CPU (a blocked read): generous, for a shared machine."""
LOCATED = re.compile(r"[^:\n]+:\d+:\d+: [^\n]+")
NETWORKS = (
    *("resnet18", "resnet20", "resnet50", "plain20", "resnext50_32x4d"),
    # The newer features: templates (repeat, when, split, comprehensions), classes, transitions,
    # naming, first_block; features.yaml (below) extends resnet20.yaml and mixes them.
    *("res2net50_26w_4s", "skresnet18", "convnext_tiny", "preact_resnet110"),
)
PART_KINDS = ("blocks", "stems", "heads", "shortcuts", "transitions")
FEATURES = """name: features
extends: resnet20.yaml
naming: {stages: "stages.{index}.blocks", blocks: "b{number}", transitions: "stages.{index}.down"}
shortcut: B
transition: convnext_downsample
block_parameters: {drop_path_rate: 0.1}
stages:
  - {depth: 2, width: 16, first_block: preact_basic_first}
  - {depth: 2, width: 32, stride: 2, block: bottle2neck, block_parameters: {scale: 3}}
  - {depth: 1, width: 16, block: selective_kernel_basic, transition: none}
"""
"""A network of the user's that reaches every newer feature at once."""
EXTRA_NETWORKS = {"features.yaml": FEATURES}

# Values a careless or hostile user might write anywhere, as YAML text.
HOSTILE_VALUES = (
    "0",
    "-1",
    "1",
    "2",
    "3",
    "true",
    "false",
    "null",
    "~",
    "''",
    "'3'",
    "1.5",
    ".inf",
    "-.inf",
    ".nan",
    "2147483648",
    "-2147483649",
    "9223372036854775808",
    "1" + "0" * 30,
    "9" * 5000,
    "0x7fffffff",
    "[]",
    "{}",
    "[1, 2, 3]",
    "[32, true]",
    "{a: 1}",
    "width * width",
    "width // 0",
    "'-' * 3",
    "'" + "-" * 40 + "1'",
    "width if stride > 'a' else 1",
    "__import__('os')",
    "x" * 300,
    "'a\\nb'",
    '"\\udc80"',
    '\'"""\'',
    "__class__",
    "forward",
    "self",
    "nn",
    "../escaped",
    "'1e-5'",
    "shortcut",
    "input",
    "identity",
    "none",
    "A",
    "C",
    "projection",
    "zero_pad",
    "add",
    "conv",
    "!!python/none ''",
    "&anchor 1",
    "*anchor",
    '"\\x00"',
    "16385",
    "10000",
    "4096",
    # The newer features' values: name patterns, template expressions, part names.
    "'{index}'",
    "'layer{number}'",
    "'stages.{index}.blocks'",
    "'{number}.{index}'",
    "'x{i}'",
    "'convs.{i - 1}'",
    "'relus.{k} for k in range(3)'",
    "'relus.{k} for k in range(1000000000)'",
    "'split.{scale} if is_first else pool'",
    "'False if is_first else i > 0'",
    "i",
    "max",
    "2147483647",
    "round(5, -100000000)",
    "1.0e+300",
    "1.0e-50",
    "OrderedDict",
    "Block",
    "resnet20.yaml",
    "features.yaml",
    "preact_basic_first",
    "bottle2neck",
    "convnext_downsample",
)
HOSTILE_KEYS = (
    "op",
    "input",
    "inputs",
    "name",
    "nodes",
    "width",
    "depth",
    "stride",
    "kernel",
    "out_channels",
    "parameters",
    "derived",
    "__class__",
    "forward",
    "1",
    "x" * 300,
    "stride_at",
    "module",
    "classes",
    "extends",
    "naming",
    "first_block",
    "first_block_parameters",
    "transition",
    "transition_parameters",
    "when",
    "index",
    "count",
    "start",
    "parts",
    "sizes",
    "names",
    "stages",
    "blocks",
    "transitions",
)
# Text fragments spliced into the raw file: YAML syntax, control characters, aliases, nesting.
HOSTILE_TEXT = (
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!python/object:os.system ",
    "'",
    '"',
    "\t",
    "\x00",
    "\x1b",
    "\r",
    "\n",
    "\u2028",
    "#",
    "|",
    ">",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "[" * 200,
    "a: &r [*r]\n",
    "\ufeff",
    "\udc80",
)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "located", "accepted" or "defect"
    detail: str  # for a defect, what went wrong (its first line)


class Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` after ``seconds`` of this process's CPU time (a loaded machine slows
    the clock on the wall, not the work), or after :data:`WALL_SECONDS` on the wall (a read that
    blocks uses no CPU); only the main thread gets signals, so elsewhere (a test runner's worker
    thread) there is no deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang

    timers = ((signal.SIGPROF, signal.ITIMER_PROF, seconds), (signal.SIGALRM, signal.ITIMER_REAL, WALL_SECONDS))
    previous = [signal.signal(number, expire) for number, _, _ in timers]
    for _, timer, limit in timers:
        signal.setitimer(timer, limit)
    try:
        yield
    finally:
        for (number, timer, _), handler in zip(timers, previous, strict=True):
            signal.setitimer(timer, 0)
            signal.signal(number, handler)


def validate(network: Path) -> Outcome:
    """What ``rescompile validate NETWORK`` would do, classified."""
    try:
        with _deadline(HANG_SECONDS):
            graph = compile_spec(network)
            cost(graph)
    except RescompileError as error:
        text = str(error)
        if LOCATED.fullmatch(text):
            return Outcome("located", "")
        return Outcome("defect", f"message not 'file:LINE:COL: one line': {text[:200]!r}")
    except Hang:
        return Outcome("defect", f"hang: over {HANG_SECONDS:g} s of CPU time or {WALL_SECONDS:g} s on the wall")
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # any other failure (RecursionError, MemoryError, ...) is a defect
        return Outcome("defect", f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
    return Outcome("accepted", "")


def seed_files() -> dict[str, str]:
    """Relative path -> text of the files every input starts from."""
    root = builtin_directory()
    files = {f"{name}.yaml": (root / f"{name}.yaml").read_text() for name in NETWORKS}
    files.update(EXTRA_NETWORKS)
    for kind in PART_KINDS:
        for path in sorted((root / kind).glob("*.yaml")):
            files[f"{kind}/{path.name}"] = path.read_text()
    return files


def mutate(text: str, rng: random.Random) -> str:
    """One to three mutations of ``text``, each chosen among the mutators."""
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATORS)(text, rng)
    return text


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _load(text: str) -> Any:
    """The mutators' own parsing (libyaml where installed: it is not what is tested)."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, width=2**16)


def _replace_value(text: str, rng: random.Random) -> str:
    """A scalar after ': ' or '- ' (or inside a flow mapping) replaced by a hostile value."""
    spots = [match.span(1) for match in re.finditer(r"(?:: |- |, |\[)([^,\]}\n:{\[]+)", text)]
    if not spots:
        return text
    start, end = rng.choice(spots)
    return text[:start] + rng.choice(HOSTILE_VALUES) + text[end:]


def _replace_key(text: str, rng: random.Random) -> str:
    spots = [match.span(1) for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*):", text)]
    if not spots:
        return text
    start, end = rng.choice(spots)
    key = text[start:end]
    typo = key[:-1] if len(key) > 1 and rng.random() < 0.5 else rng.choice(HOSTILE_KEYS)
    return text[:start] + typo + text[end:]


def _splice_text(text: str, rng: random.Random) -> str:
    position = rng.randrange(len(text) + 1)
    return text[:position] + rng.choice(HOSTILE_TEXT) + text[position:]


def _delete_span(text: str, rng: random.Random) -> str:
    start = rng.randrange(len(text) + 1)
    return text[:start] + text[start + rng.randint(1, 20) :]


def _shuffle_lines(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) < 2:
        return text
    index = rng.randrange(len(lines))
    action = rng.choice(("delete", "duplicate", "swap", "indent", "dedent"))
    if action == "delete":
        del lines[index]
    elif action == "duplicate":
        lines.insert(index, lines[index])
    elif action == "swap":
        other = rng.randrange(len(lines))
        lines[index], lines[other] = lines[other], lines[index]
    elif action == "indent":
        lines[index] = "  " + lines[index]
    else:
        lines[index] = lines[index].lstrip()
    return "".join(lines)


def _restructure(text: str, rng: random.Random) -> str:
    """Parse, change the data's shape (wrap, drop, duplicate, bomb), and write it back as YAML."""
    try:
        data = _load(text)
    except (yaml.YAMLError, RecursionError, ValueError):  # too deep or too long a number for PyYAML
        return text
    if not isinstance(data, dict) or not data:
        return text
    paths = _paths(data)
    path = rng.choice(paths)
    parent = _at(data, path[:-1])
    key = path[-1]
    actions = ("wrap_list", "wrap_map", "drop", "bool", "string", "big", "nest", "bomb", "duplicate", "rename")
    action = rng.choice(actions)
    if action == "drop":
        del parent[key]
    elif action in ("duplicate", "rename") and isinstance(parent, dict):
        # A second node (or key) under a new name, or the same one renamed: in place, order kept.
        new_key = rng.choice((f"{key}2", *HOSTILE_KEYS))
        items = list(parent.items())
        index = list(parent).index(key)
        entry = (new_key, parent[key])
        items[index : index + 1] = [items[index], entry] if action == "duplicate" else [entry]
        parent.clear()
        parent.update(items)
    elif action == "wrap_list":
        parent[key] = [parent[key]]
    elif action == "wrap_map":
        parent[key] = {"value": parent[key]}
    elif action == "bool":
        parent[key] = True
    elif action == "string":
        parent[key] = str(parent[key])
    elif action == "big":
        parent[key] = rng.choice((2**31, 2**63, 10**30, -(2**40)))
    elif action == "nest":
        parent[key] = "NESTED"  # spliced in as text below: PyYAML's dumper recurses too
    try:
        dumped = _dump(data)
    except (yaml.YAMLError, UnicodeError, RecursionError, ValueError):
        return text
    if action == "nest":
        depth = rng.choice((10, 70, 500))
        dumped = dumped.replace("NESTED", "[" * depth + "1" + "]" * depth, 1)
    if action == "bomb":
        bomb = "laugh0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"laugh{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)
        )
        dumped = bomb + dumped
    return dumped


# What the feature mutator sets: a network's keys (top level or a stage's) and a part's templates.
NETWORK_FEATURES: dict[str, tuple[Any, ...]] = {
    "naming": (
        {"stages": "layer{number}"},
        {"stages": "stages.{index}.blocks", "transitions": "stages.{index}.down"},
        {"stages": "layer{number}", "transitions": "layer{index}"},
        {"stages": "layer{number}", "transitions": "layer{number}.down"},
        {"blocks": "b{number}"},
        {"blocks": "{index}.x"},
        {"stages": "{index}"},
        {"stages": "stem{index}"},
        {"transitions": "head{index}"},
        {"stages": "forward{index}"},
    ),
    "extends": ("resnet20.yaml", "features.yaml", "resnet18", "nothere.yaml", "resnet18.yaml", 3, None),
    "transition": ("convnext_downsample", "none", "nothere", None),
    "transition_parameters": ({}, {"width": 8}, {"x": 1}),
    "block": (
        "basic",
        "bottleneck",
        "bottle2neck",
        "selective_kernel_basic",
        "preact_basic_first",
        "resnest_bottleneck",
    ),
    "block_parameters": ({"scale": 2}, {"scale": 1}, {"scale": 2**31 - 1}, {"drop_path_rate": 0.5}, {"paths": 3}),
}
STAGE_FEATURES: dict[str, tuple[Any, ...]] = {
    "first_block": ("preact_basic_first", "bottleneck", "bottle2neck", "basic", "selective_kernel_basic", "nothere"),
    "first_block_parameters": ({"drop_path_rate": 0.2}, {"scale": 2}, {"expansion": 1}, {"x": 1}),
    "block": NETWORK_FEATURES["block"],
    "block_parameters": NETWORK_FEATURES["block_parameters"],
    "transition": NETWORK_FEATURES["transition"],
    "depth": (1, 2, 3, 10_000),
    "stride": (1, 2, 4),
}
COUNTS = (0, 1, 2, 3, -1, "scale - 1", "paths", "block_index", 2**31 - 1, 100_000, "i", "2 if stride > 1 else 1")
CONDITIONS = ("False", "True", "stride > 1", "i > 0", "block_index % 2 == 0", "is_first", "nothere", "i < 0", 1)
INDICES = ("i", "k", "j", "max", "round", "width", "stride", "x")
CLASSES = ("Inner", "OrderedDict", "F", "XBlock", "Conv2d", "Module", "nn", "lower", "ResNet")


def _feature(text: str, rng: random.Random) -> str:
    """Set one of the newer features: a network's naming, extends, transitions, first blocks, a
    stage's block; a part's node wrapped in a repeat, given a when, or a classes entry."""
    try:
        data = _load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return text
    if not isinstance(data, dict):
        return text
    stages = data.get("stages")
    nodes = data.get("nodes")
    if isinstance(stages, list) and stages and rng.random() < 0.5:
        stage = rng.choice(stages)
        if isinstance(stage, dict):
            key = rng.choice(sorted(STAGE_FEATURES))
            stage[key] = rng.choice(STAGE_FEATURES[key])
    elif isinstance(stages, list):
        key = rng.choice(sorted(NETWORK_FEATURES))
        data[key] = rng.choice(NETWORK_FEATURES[key])
    elif isinstance(nodes, dict) and nodes:
        name = rng.choice(list(nodes))
        node = nodes[name]
        action = rng.choice(("repeat", "when", "classes", "placeholder", "comprehension"))
        if action == "repeat":
            index = rng.choice(INDICES)
            inner = {f"{name}.{{{index}}}" if rng.random() < 0.7 else name: node}
            wrapped = {"op": "repeat", "index": index, "count": rng.choice(COUNTS), "nodes": inner}
            if rng.random() < 0.3:
                wrapped["start"] = rng.choice(COUNTS)
            nodes[name] = wrapped
        elif action == "when" and isinstance(node, dict):
            node["when"] = rng.choice(CONDITIONS)
        elif action == "classes":
            classes = data.setdefault("classes", {})
            if isinstance(classes, dict):
                prefix = name.split(".")[0] if "." in name and rng.random() < 0.7 else name
                classes[prefix if rng.random() < 0.8 else f"{prefix}.x"] = rng.choice(CLASSES)
        elif action == "placeholder" and isinstance(node, dict):
            nodes[f"{name}.{{{rng.choice(INDICES)}}}"] = nodes.pop(name)
        elif isinstance(node, dict):
            other = rng.choice(list(nodes))
            node["inputs"] = [f"{other} for k in range({rng.choice(COUNTS)})", other]
    else:
        return text
    try:
        return _dump(data)
    except (yaml.YAMLError, UnicodeError, RecursionError, ValueError):
        return text


def _paths(data: Any, limit: int = 10_000) -> list[tuple[Any, ...]]:
    """Up to ``limit`` key and index paths in ``data``, found without recursion: an earlier
    mutation may have nested it hundreds deep, or planted an alias bomb of a million paths."""
    paths: list[tuple[Any, ...]] = []
    pending: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while pending and len(paths) < limit:
        value, prefix = pending.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            paths.append((*prefix, key))
            pending.append((child, (*prefix, key)))
    return paths


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


MUTATORS: tuple[Callable[[str, random.Random], str], ...] = (
    _replace_value,
    _replace_value,
    _replace_key,
    _splice_text,
    _delete_span,
    _shuffle_lines,
    _restructure,
    _restructure,
    _feature,
    _feature,
)


@dataclass(frozen=True)
class Case:
    """One input: which network is compiled, which file was mutated, and its new text."""

    network: str
    mutated: str
    text: str

    @contextmanager
    def applied(self, folder: Path, files: dict[str, str]) -> Iterator[Path]:
        """``folder`` (holding ``files``) with the mutated file in place, restored afterwards."""
        path = folder / self.mutated
        # Written as bytes: a lone surrogate or any other text a mutation made goes in as it is.
        path.write_bytes(self.text.encode("utf-8", "surrogatepass"))
        try:
            yield folder / self.network
        finally:
            path.write_text(files[self.mutated])


def cases(count: int, seed: int, files: dict[str, str], users: dict[str, list[str]]) -> Iterator[Case]:
    """``users`` maps each file to the networks that read it: a mutated part is compiled by one of
    them, so that no input is spent on a file nothing reads."""
    rng = random.Random(seed)
    names = sorted(users)
    for _ in range(count):
        mutated = rng.choice(names)
        yield Case(rng.choice(users[mutated]), mutated, mutate(files[mutated], rng))


def _users(folder: Path) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for network in (*(f"{name}.yaml" for name in NETWORKS), *EXTRA_NETWORKS):
        for path in compile_spec(folder / network).files:
            users.setdefault(path.relative_to(folder).as_posix(), []).append(network)
    return users


def _parsed_once(seeds: dict[Path, bytes]) -> Callable[[Path, str | None], YamlDocument]:
    """``read_yaml``, parsing each file that holds its seed's bytes once: an input mutates one
    file, and parsing the others again (PyYAML is pure Python) was three quarters of its time. A
    mutated file is read and parsed as ``validate`` does, every time."""
    parsed: dict[tuple[Path, str | None], YamlDocument] = {}

    def read(path: Path, shown_as: str | None = None) -> YamlDocument:
        if path not in seeds or path.read_bytes() != seeds[path]:
            return read_yaml(path, shown_as)
        if (path, shown_as) not in parsed:
            parsed[(path, shown_as)] = read_yaml(path, shown_as)
        return parsed[(path, shown_as)]

    return read


def run(count: int, seed: int, save: Path | None = None, report: Callable[[str], None] = print) -> Counter[str]:
    """Run ``count`` inputs; returns the count of each outcome kind and reports each defect."""
    files = seed_files()
    counts: Counter[str] = Counter()
    details: Counter[str] = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rescompile-fuzz-") as scratch:
        folder = Path(scratch)
        for relative, text in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text)
        read = _parsed_once({folder / relative: (folder / relative).read_bytes() for relative in files})
        for index, case in enumerate(cases(count, seed, files, _users(folder))):
            with case.applied(folder, files) as network, mock.patch.object(loader, "read_yaml", read):
                outcome = validate(network)
                if outcome.kind == "defect" and save is not None:
                    shutil.copytree(folder, save / str(index))
            counts[outcome.kind] += 1
            if outcome.kind == "defect":
                if details[outcome.detail] == 0:
                    report(f"defect (input {index}, {case.mutated} of {case.network}): {outcome.detail}")
                details[outcome.detail] += 1
            if (index + 1) % 1000 == 0:
                report(f"{index + 1} inputs, {dict(counts)}, {time.perf_counter() - started:.0f} s")
    return counts


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="how many mutated inputs (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutations (default 1)")
    parser.add_argument("--save", type=Path, help="copy each defect's input folder here")
    options = parser.parse_args(arguments)
    started = time.perf_counter()
    counts = run(options.inputs, options.seed, options.save)
    print(
        f"{options.inputs} inputs in {time.perf_counter() - started:.0f} s: {counts['located']} located errors, "
        f"{counts['accepted']} accepted, {counts['defect']} defects"
    )
    return 1 if counts["defect"] else 0


if __name__ == "__main__":
    sys.exit(main())
