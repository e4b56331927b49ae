"""The degradation experiment of He et al. 2016 (section 4.2, Figure 6), on a real dataset that ships
inside a package: scikit-learn's handwritten digits (1,797 grey 8×8 images, 10 classes).

    ./dev experiment degradation                  # the full run: 8 nets × 3 seeds, docs/degradation.{png,md,json}
    ./dev experiment degradation --nets plain20,resnet20 --seeds 1 --epochs 2 --output /tmp/smoke

The nets are the built-in specs, compiled by the torch backend (``rescompile.create_model`` with the
input declared as the data's: one channel, 8×8; the CIFAR stem keeps 8×8, the stages give 8, 4 and
2). Training is torch's own ``DataLoader`` and ``torch.optim.SGD`` in the short loop of
:func:`train`, with the paper's recipe: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, the
learning rate divided by 10 at 50% and 75% of training, per-pixel mean subtracted, random
translations of up to 1 pixel (the paper pads 32×32 images by 4 and crops: the same eighth of the
side). The schedule is scaled to the data by epochs: the paper's 64k iterations are ~180 epochs of
its 45k images; here ``--epochs`` (default 120) of 1,347 images, 11 steps each.

Training error is the running error on the augmented batches as they are trained (train mode);
test error is on the 450 held-out images (a fixed stratified quarter) in eval mode, after every
epoch. Everything is deterministic given the seed (one seed sets the weights, the shuffling and the
translations).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.queues
import queue
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rescompile.api import create_graph, create_model, list_models
from rescompile.spec.errors import RescompileError

if TYPE_CHECKING:
    import torch

NETS = ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56")
SIDE = 8
"""The digits' height and width."""
SHIFT = 1
"""The largest random translation in pixels, each way."""
TEST_FRACTION = 0.25
SPLIT_SEED = 0
"""The train/test split is the same for every seed, so seeds differ only in the training."""


@dataclass(frozen=True)
class Recipe:
    epochs: int = 120
    batch: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4

    def learning_rate_at(self, epoch: int) -> float:
        """The paper's steps: ÷10 at half of training and again at three quarters."""
        return self.learning_rate * 0.1 ** sum(epoch >= self.epochs * fraction for fraction in (0.5, 0.75))


@dataclass(frozen=True)
class Curve:
    """One net trained from one seed: errors in percent after every epoch."""

    net: str
    seed: int
    train_error: list[float]
    test_error: list[float]
    seconds: float


@dataclass(frozen=True)
class Digits:
    train_images: torch.Tensor
    """(N, 1, 8, 8) float32, the training set's per-pixel mean subtracted (from both sets)."""
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits() -> Digits:
    """scikit-learn's digits, split in a fixed stratified 3:1 (1,347 train, 450 test), scaled to [0, 1]."""
    import torch
    from sklearn.datasets import load_digits as sklearn_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    images, labels = sklearn_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images / 16.0, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    train = torch.tensor(train_x, dtype=torch.float32).reshape(-1, 1, SIDE, SIDE)
    test = torch.tensor(test_x, dtype=torch.float32).reshape(-1, 1, SIDE, SIDE)
    mean = train.mean(dim=0)
    return Digits(train - mean, torch.tensor(train_y), test - mean, torch.tensor(test_y))


def translate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random offset of up to ``SHIFT`` pixels each way, zero-filled
    (zero is the mean pixel after mean subtraction): a crop of the image padded by ``SHIFT``."""
    import torch

    count = images.shape[0]
    padded = torch.nn.functional.pad(images, (SHIFT,) * 4)
    offsets = torch.randint(0, 2 * SHIFT + 1, (2, count), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(SIDE))[:, :, None]
    columns = (offsets[1][:, None] + torch.arange(SIDE))[:, None, :]
    return padded[torch.arange(count)[:, None, None], 0, rows, columns].unsqueeze(1)


def error_percent(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) != labels).float().mean())


def train(net: str, seed: int, digits: Digits, recipe: Recipe, on_step: Callable[[], None]) -> Curve:
    """Train the built-in ``net`` from ``seed``; ``on_step`` is called after every optimiser step."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    start = time.perf_counter()
    torch.manual_seed(seed)  # the initial weights (torchvision's initialisation, in the generated module)
    model = create_model(net, in_channels=1, input_size=SIDE)
    generator = torch.Generator().manual_seed(seed)  # the shuffling and the translations
    loader = DataLoader(
        TensorDataset(digits.train_images, digits.train_labels), recipe.batch, shuffle=True, generator=generator
    )
    optimizer = torch.optim.SGD(
        model.parameters(), recipe.learning_rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    train_error: list[float] = []
    test_error: list[float] = []
    for epoch in range(recipe.epochs):
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate_at(epoch)
        model.train()
        wrong = 0.0
        for images, labels in loader:
            logits = model(translate(images, generator))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            wrong += error_percent(logits.detach(), labels) * len(labels)
            on_step()
        train_error.append(wrong / len(digits.train_labels))
        model.eval()
        with torch.no_grad():
            test_error.append(error_percent(model(digits.test_images), digits.test_labels))
    return Curve(net, seed, train_error, test_error, time.perf_counter() - start)


def mean_and_deviation(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def by_net(curves: Sequence[Curve]) -> dict[str, list[Curve]]:
    grouped: dict[str, list[Curve]] = {}
    for curve in curves:
        grouped.setdefault(curve.net, []).append(curve)
    return grouped


def plot(curves: Sequence[Curve], path: Path) -> None:
    """The paper's Figure 6: plain nets on the left, residual nets on the right; thin dashed lines
    training error, bold lines test error, each the mean over seeds, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever display there is
    import matplotlib.pyplot as plt

    grouped = by_net(curves)
    families = [family for family in ("plain", "resnet") if any(net.startswith(family) for net in grouped)]
    figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.5), sharey=True, squeeze=False)
    colours = {"20": "tab:orange", "32": "tab:blue", "44": "tab:green", "56": "tab:red"}
    top = 0.0
    for axis, family in zip(axes[0], families, strict=True):
        for net, runs in grouped.items():
            if not net.startswith(family):
                continue
            depth = net.removeprefix(family)
            colour = colours.get(depth)
            epochs = range(1, len(runs[0].train_error) + 1)
            train_mean = [statistics.fmean(values) for values in zip(*(run.train_error for run in runs), strict=True)]
            test_mean = [statistics.fmean(values) for values in zip(*(run.test_error for run in runs), strict=True)]
            axis.plot(epochs, train_mean, "--", linewidth=0.8, color=colour)
            axis.plot(epochs, test_mean, "-", linewidth=2, color=colour, label=f"{family}-{depth}")
            top = max(top, *train_mean[len(train_mean) // 10 :], *test_mean[len(test_mean) // 10 :])
        axis.set_title(f"{'plain' if family == 'plain' else 'ResNet'} (dashed: training, bold: test)")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_ylim(0, min(100.0, max(1.0, 1.2 * top)))  # the first epochs' ~90% would flatten the rest
    seeds = len({curve.seed for curve in curves})
    figure.suptitle(f"scikit-learn digits, mean of {seeds} seed{'s' if seeds > 1 else ''}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(curves: Sequence[Curve]) -> str:
    """Markdown: each net's final training and test error (mean ± std over seeds), then the two
    comparisons the paper's claim rests on."""
    grouped = by_net(curves)
    rows = [
        "| net | final training error (%) | final test error (%) | wall seconds per run |",
        "|---|---:|---:|---:|",
    ]
    for net, runs in grouped.items():
        train_error = mean_and_deviation([run.train_error[-1] for run in runs])
        test_error = mean_and_deviation([run.test_error[-1] for run in runs])
        seconds = statistics.fmean(run.seconds for run in runs)
        rows.append(
            f"| {net} | {train_error[0]:.2f} ± {train_error[1]:.2f} | {test_error[0]:.2f} ± {test_error[1]:.2f} "
            f"| {seconds:.0f} |"
        )
    epochs = len(curves[0].train_error)
    seeds = len({curve.seed for curve in curves})
    lines = [
        f"Final errors after {epochs} epoch{'s' if epochs > 1 else ''}, mean ± standard deviation over "
        f"{seeds} seed{'s' if seeds > 1 else ''}.",
        "",
        *rows,
    ]
    for family in ("plain", "resnet"):
        nets = [net for net in grouped if net.startswith(family)]
        if len(nets) > 1:
            shallow, deep = nets[0], nets[-1]
            difference = statistics.fmean(run.train_error[-1] for run in grouped[deep]) - statistics.fmean(
                run.train_error[-1] for run in grouped[shallow]
            )
            lines += ["", f"{deep} minus {shallow}, final training error: {difference:+.2f} points."]
    return "\n".join(lines) + "\n"


_progress: multiprocessing.queues.Queue[int] | None = None
"""In a worker process: where :func:`_train_job` reports every step, for the parent's progress bar."""


def _start_worker(progress: multiprocessing.queues.Queue[int], threads: int) -> None:
    import torch

    global _progress
    _progress = progress
    torch.set_num_threads(threads)


def _train_job(net: str, seed: int, recipe: Recipe) -> Curve:
    progress = _progress
    assert progress is not None, "runs in a worker started by _start_worker"
    return train(net, seed, load_digits(), recipe, lambda: progress.put(1))


def run(
    nets: Sequence[str], seeds: Sequence[int], recipe: Recipe, output: Path, jobs: int, threads: int
) -> list[Curve]:
    """Train every net from every seed, ``jobs`` runs at a time on ``threads`` torch threads each, then
    write ``degradation.png``, ``degradation.md`` and the curves, ``degradation.json``, in ``output``.

    NOTE: runs in worker processes of one torch thread by default: these nets' 8×8 convolutions gain
    little from a second thread, and torch's OpenMP threads busy-wait at every barrier, so on a
    shared machine two threads in one process ran plain56 5-10 times slower than one (measured)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    steps = len(nets) * len(seeds) * recipe.epochs * math.ceil(len(load_digits().train_labels) / recipe.batch)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no OpenMP state forked
    progress: multiprocessing.queues.Queue[int] = context.Queue()
    with (
        ProcessPoolExecutor(jobs, context, initializer=_start_worker, initargs=(progress, threads)) as pool,
        tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True) as bar,
    ):
        futures = [pool.submit(_train_job, net, seed, recipe) for seed in seeds for net in nets]
        while not all(future.done() for future in futures) or not progress.empty():
            with contextlib.suppress(queue.Empty):
                bar.update(progress.get(timeout=0.2))
            bar.set_description(f"{sum(future.done() for future in futures)}/{len(futures)} runs")
        curves = [future.result() for future in futures]
    minutes = (time.perf_counter() - start) / 60
    output.mkdir(parents=True, exist_ok=True)
    plot(curves, output / "degradation.png")
    plural = "s" if threads > 1 else ""
    note = (
        f"\nThe whole run took {minutes:.1f} minutes, {jobs} runs at a time on {threads} torch thread{plural} each.\n"
    )
    (output / "degradation.md").write_text(table(curves) + note)
    (output / "degradation.json").write_text(
        json.dumps([dataclasses.asdict(curve) for curve in curves], indent=1) + "\n"
    )
    return curves


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev experiment degradation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--nets", default=",".join(NETS), help=f"built-in nets, comma-separated (default: {','.join(NETS)})"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N-1 (default: 3)")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs, help=f"epochs per run (default: {Recipe.epochs})")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each in its own process (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument(
        "--output", type=Path, default=Path("docs"), help="folder for the plot and table (default: docs)"
    )
    options = parser.parse_args(argv)
    nets = [net.strip() for net in options.nets.split(",") if net.strip()]
    if min(options.seeds, options.epochs, options.jobs, options.threads) < 1 or not nets:
        parser.error("--seeds, --epochs, --jobs and --threads must be at least 1, and --nets must name a net")
    unknown = [net for net in nets if net not in list_models("plain*") + list_models("resnet*")]
    if unknown:
        parser.error(f"--nets: unknown built-in {', '.join(unknown)}; use plain or resnet nets from `rescompile list`")
    for net in nets:
        try:
            create_graph(net, in_channels=1, input_size=SIDE)
        except RescompileError as error:
            parser.error(f"--nets: {net} cannot take the 8×8 digits: {error}")
    run(nets, range(options.seeds), Recipe(epochs=options.epochs), options.output, options.jobs, options.threads)
    print((options.output / "degradation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
