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

import yaml

from rescompile.compiler.cost import cost
from rescompile.compiler.pipeline import compile_spec
from rescompile.spec import RescompileError, builtin_directory

HANG_SECONDS = 10.0
"""Generous: the largest legal network (10,000 blocks) lowers and costs in about 2.5 s."""
LOCATED = re.compile(r"[^:\n]+:\d+:\d+: [^\n]+")
NETWORKS = ("resnet18", "resnet20", "resnet50", "plain20", "resnext50_32x4d")
PART_KINDS = ("blocks", "stems", "heads", "shortcuts")

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
    """Raise :class:`Hang` after ``seconds``; only the main thread gets signals, so elsewhere
    (a test runner's worker thread) there is no deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        return Outcome("defect", f"hang: over {HANG_SECONDS:g} s")
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # any other failure (RecursionError, MemoryError, ...) is a defect
        return Outcome("defect", f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
    return Outcome("accepted", "")


def seed_files() -> dict[str, str]:
    """Relative path -> text of the files every input starts from."""
    root = builtin_directory()
    files = {f"{name}.yaml": (root / f"{name}.yaml").read_text() for name in NETWORKS}
    for kind in PART_KINDS:
        for path in sorted((root / kind).glob("*.yaml")):
            files[f"{kind}/{path.name}"] = path.read_text()
    return files


def mutate(text: str, rng: random.Random) -> str:
    """One to three mutations of ``text``, each chosen among the mutators."""
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATORS)(text, rng)
    return text


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
        data = yaml.safe_load(text)
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
    dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=2**16)
    if action == "nest":
        depth = rng.choice((10, 70, 500))
        dumped = dumped.replace("NESTED", "[" * depth + "1" + "]" * depth, 1)
    if action == "bomb":
        bomb = "laugh0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"laugh{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)
        )
        dumped = bomb + dumped
    return dumped


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
    for name in NETWORKS:
        network = f"{name}.yaml"
        for path in compile_spec(folder / network).files:
            users.setdefault(path.relative_to(folder).as_posix(), []).append(network)
    return users


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
        for index, case in enumerate(cases(count, seed, files, _users(folder))):
            with case.applied(folder, files) as network:
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
