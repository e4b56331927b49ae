"""Training equivalence (rescompile.training, ``rescompile check --train-steps``): 10 steps of the
paper's SGD in torch and in Flax/optax, from the same weights on the same batches, give the same
losses, weights and BatchNorm running statistics; a real difference in the update is caught and
named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import elementwise_network

from rescompile import training
from rescompile.check import TRAINING_TOLERANCE
from rescompile.check import main as check_main
from rescompile.compiler import compile_spec
from rescompile.compiler.weights import random_weights


@pytest.mark.parametrize(
    # plain20's layers are resnet20's without the shortcuts: it and resnet18 run in the slow tail.
    "name",
    ["resnet20", pytest.param("plain20", marks=pytest.mark.slow), pytest.param("resnet18", marks=pytest.mark.slow)],
)
def test_ten_sgd_steps_in_torch_and_flax_give_the_same_model(name: str) -> None:
    graph = compile_spec(name, size=32)
    weights = random_weights(graph, seed=0)
    data = training.batches(graph, steps=10, batch=8, seed=1)
    torch_run = training.train("torch", graph, weights, data, float64=True)
    flax_run = training.train("flax", graph, weights, data, float64=True)
    comparison = training.compare(torch_run, flax_run, TRAINING_TOLERANCE)
    assert comparison.first_mismatch is None, comparison
    assert comparison.loss_max_relative < 1e-10
    # The weights moved: the comparison is of a trained model, running statistics included.
    assert any(abs(torch_run.weights[key] - weights[key]).max() > 1e-3 for key in weights)
    assert any(key.endswith("running_var") for key in torch_run.weights)


def test_a_different_weight_decay_is_caught_and_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a two-block network: any weights show it (resnet20 here cost more than the ten-step test)."""
    graph = compile_spec(elementwise_network(tmp_path, "relu"))
    weights = random_weights(graph, seed=0)
    data = training.batches(graph, steps=2, batch=4, seed=1)
    flax_run = training.train("flax", graph, weights, data, float64=True)
    monkeypatch.setattr(training, "PAPER_SGD", dataclasses.replace(training.PAPER_SGD, weight_decay=1e-2))
    torch_run = training.train("torch", graph, weights, data, float64=True)
    comparison = training.compare(torch_run, flax_run, TRAINING_TOLERANCE)
    assert comparison.first_mismatch is not None
    assert comparison.first_mismatch.startswith("step 2 loss")  # step 1's loss precedes any update


def test_the_command_reports_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["resnet20", "--size", "16", "--batch", "4", "--train-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") >= 5 and "torch and flax train alike (3 steps, float64)" in printed
