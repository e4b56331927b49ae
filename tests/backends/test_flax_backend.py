"""The flax backend against real references: the torch backend, torchvision and hand-worked numbers.

Every architecture in ``architectures/`` (at 32×32) and resnet50 at 224×224 get the same weights in
flax and torch, and must agree block by block in eval and train mode, including the running
statistics one training step leaves behind.

Tolerances, all through :func:`rescompile.testing.assert_close`, whose rule is
``max |actual - expected| <= atol + rtol * max |expected|`` (rtol relative to the tensor's scale):

* every module on identical inputs (``block_outputs(..., feed=torch's outputs)``): ``"block"``
  (1e-5, 1e-5), in eval and train mode, and for the running statistics after one training step;
* the whole network in eval mode with ``random_weights``: ``"block"`` for every module. Its random
  running statistics do not normalise, so activations grow through the stages (ResNet-50 at 224:
  blocks ~4e3, logits ~1e3, where one float32 ulp is ~6e-5); the scale-relative rtol carries that;
* the whole network in train mode, or in eval mode with running statistics calibrated on a batch
  (activations O(1)): ``"network"`` (1e-4, 1e-4) on the logits. Float32 rounding accumulates
  through train-mode BatchNorm as much in torch as here: torch's own float32 result is as far from
  its float64 one as flax's is (ResNet-50 at 224, layer4.2: 7.7e-5 vs 1.0e-4 of scale);
* weight round trips and the zero-init identity: exact (``EXACT``).

Golden file: ``tests/golden/resnet50_flax.py`` pins ``emit_source`` for resnet50. After an intended
change to the emitter, regenerate it and review the diff::

    RESCOMPILE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/backends/test_flax_backend.py -k golden
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import pytest
import torch
import torchvision
from conftest import (
    COMPILE_TEST_PRESETS,
    PART_COVERING_PRESETS,
    builtin_params,
    compiled,
    network_params,
    network_source,
)
from flax import nnx
from support import layer
from test_timm_presets import TIMM_PRESETS
from torch import nn

from rescompile.backends import flax_backend, torch_backend
from rescompile.backends.source import load_source
from rescompile.compiler import compile_spec
from rescompile.compiler.ir import Graph
from rescompile.compiler.weights import Weights, initial_weights, random_weights, read_weights, save_weights
from rescompile.spec import RescompileError, builtin_networks
from rescompile.testing import Tolerance, assert_close

GOLDEN = Path(__file__).parents[1] / "golden" / "resnet50_flax.py"
EXACT = Tolerance(atol=0.0, rtol=0.0)
SMALL_SIZE = 32
# 600 blocks: an eager build and three passes through it take ~20 s.
SLOW_ARCHITECTURES = {"resnet1202"}
# random_weights' running statistics do not normalise: eval activations overflow float32 in
# resnet1202 (torch's too), so it is compared in eval mode with statistics calibrated on a batch.
OVERFLOWS_IN_EVAL = {"resnet1202"}
PRE_ACTIVATION = {"preact_resnet110", "preact_resnet164", "resnetv2_50", "resnetv2_50x1_bit"}


# --- helpers --------------------------------------------------------------------------------------


def images(graph: Graph, seed: int, batch: int = 2) -> np.ndarray:
    """A batch in torch layout (batch, channels, height, width)."""
    return np.random.default_rng(seed).standard_normal((batch, *graph.input_shape)).astype(np.float32)


def flax_model(graph: Graph, weights: Weights, abstract: bool = True) -> nnx.Module:
    """The flax model with ``weights`` loaded. Built abstractly (``nnx.eval_shape``) by default,
    which skips the random initialisation that ``load_weights`` replaces entirely anyway (and
    ``load_weights`` refuses a state it does not fill completely)."""
    model = nnx.eval_shape(lambda: flax_backend.build_module(graph)) if abstract else flax_backend.build_module(graph)
    flax_backend.load_weights(model, graph, weights)
    return model


def torch_model(graph: Graph, weights: Weights) -> nn.Module:
    """The torch backend's model with ``weights`` loaded (built on the meta device: no init cost)."""
    with torch.device("meta"):
        model = torch_backend.build_module(graph)
    model = model.to_empty(device="cpu")
    torch_backend.load_weights(model, graph, weights)
    return model


def compare_with_torch(
    flax: nnx.Module,
    reference: nn.Module,
    graph: Graph,
    batch: np.ndarray,
    whole_network: Literal["every module", "logits"] | None,
    jit: bool = False,
) -> None:
    """One pass of each model, both in the same mode. First every module on identical inputs (the
    torch module's input, via ``feed``), then, if asked, the whole network on its own outputs."""
    expected = torch_backend.block_outputs(reference, graph, batch)
    isolated = flax_backend.block_outputs(flax, batch, feed=expected, jit=jit, graph=graph)
    assert list(isolated) == list(expected)
    for name, array in expected.items():
        assert_close(isolated[name], array, tolerance="block", what=f"{name} on torch's input")
    if reference.training:
        # Every BatchNorm has now seen the same input in both: its running statistics must agree.
        assert_running_statistics_close(flax, reference, graph)
    if whole_network is None:
        return
    actual = flax_backend.block_outputs(flax, batch, jit=jit, graph=graph)
    if whole_network == "every module":
        for name, array in expected.items():
            assert_close(actual[name], array, tolerance="block", what=f"{name} in the whole network")
    else:
        assert_close(actual["head"], expected["head"], tolerance="network", what="logits of the whole network")


def assert_running_statistics_close(flax: nnx.Module, torch_module: nn.Module, graph: Graph) -> None:
    actual = flax_backend.to_weights(flax, graph)
    expected = torch_backend.to_weights(torch_module, graph)
    names = [name for name in expected if name.endswith((".running_mean", ".running_var"))]
    assert names or not any(node.op.kind == "batch_norm" for _, node in graph.nodes())  # GroupNorm keeps none
    for name in names:
        assert_close(actual[name], expected[name], tolerance="block", what=name)


def assert_weights_equal(actual: Weights, expected: Weights, what: str) -> None:
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == np.float32
        assert_close(actual[name], array, tolerance=EXACT, what=f"{what}: {name}")


def calibrate(model: nn.Module, batch: np.ndarray) -> None:
    """Set every torch BatchNorm's running statistics to those of ``batch`` (momentum 1 for one
    training pass), so eval-mode activations stay O(1) with non-trivial statistics."""
    norms = {module: module.momentum for module in model.modules() if isinstance(module, nn.BatchNorm2d)}
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    for norm, momentum in norms.items():
        norm.momentum = momentum
    model.eval()


def write_parts(folder: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder / "net.yaml"


# --- the emitter ----------------------------------------------------------------------------------


def test_golden_resnet50_source() -> None:
    source = flax_backend.emit_source(compile_spec("resnet50"))
    if os.environ.get("RESCOMPILE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(source)
    assert source == GOLDEN.read_text(), "generated source changed; see this file's docstring to regenerate"


@pytest.mark.parametrize("name", builtin_params(builtin_networks()))
def test_padding_is_explicit_pairs_everywhere(name: str) -> None:
    source = flax_backend.emit_source(compiled(name))
    padded = re.findall(r"nnx\.Conv\(|nnx\.(?:max|avg)_pool\b", source)
    explicit = re.findall(r"padding=\(\((\w+(?: \W+ \w+)*), \1\), \(\1, \1\)\)", source)
    assert padded and len(explicit) == len(padded)
    assert not re.search(r"padding=['\"]", source)


def test_momentum_conversion() -> None:
    assert repr(flax_backend.flax_momentum(0.1)) == "0.9"
    assert repr(flax_backend.flax_momentum(0.01)) == "0.99"
    assert repr(flax_backend.flax_momentum(0.3)) == "0.7"


def test_generated_file_runs_with_jax_and_flax_alone(tmp_path: Path) -> None:
    """The written file imports neither rescompile nor torch; given the same state in a fresh
    interpreter it computes exactly what the module built in-process from the same source does."""
    graph = compile_spec("resnet20")
    (tmp_path / "model.py").write_text(flax_backend.emit_source(graph))
    model = flax_model(graph, random_weights(graph, seed=1))
    model.eval()
    weights = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))  # not DropPath's random streams
    state: dict[str, Any] = {
        ".".join(map(str, path)): np.asarray(value[...]) for path, value in nnx.to_flat_state(weights)
    }
    np.savez(tmp_path / "state.npz", **state)
    batch = images(graph, seed=3).transpose(0, 2, 3, 1)
    np.save(tmp_path / "images.npy", batch)
    script = (
        "import sys, runpy, numpy as np\n"
        "sys.modules['rescompile'] = None; sys.modules['torch'] = None\n"
        "from flax import nnx\n"
        "build = runpy.run_path('model.py')['build']\n"
        "model = nnx.eval_shape(lambda: build())\n"
        "saved = np.load('state.npz')\n"
        "path = lambda key: tuple(int(part) if part.isdigit() else part for part in key.split('.'))\n"
        "nnx.update(model, nnx.from_flat_state({path(key): saved[key] for key in saved.files}))\n"
        "model.eval()\n"
        "np.save('logits.npy', np.asarray(model(np.load('images.npy'))))\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    assert_close(np.load(tmp_path / "logits.npy"), np.asarray(model(batch)), tolerance=EXACT, what="logits")


# --- BatchNorm, hand-worked -----------------------------------------------------------------------


def test_batch_norm_matches_torch_hand_computed() -> None:
    """One channel, batch [0, 2]: mean 1, biased variance 1 (normalises), unbiased 2 (updates)."""
    generated = load_source(flax_backend.emit_source(compile_spec("resnet20")), "flax", "batch_norm_test")
    norm = generated.BatchNorm(1)
    batch = np.array([0.0, 2.0], np.float32).reshape(2, 1, 1, 1)
    scale = 1 / np.sqrt(1 + 1e-5)
    assert_close(np.asarray(norm(batch)).ravel(), [-scale, scale], tolerance=Tolerance(1e-7, 1e-6), what="train")
    assert_close(np.asarray(norm.mean[...]), [0.1], tolerance=Tolerance(1e-7, 1e-6), what="mean: 0.9 * 0 + 0.1 * 1")
    # nnx.BatchNorm would give 0.9 * 1 + 0.1 * 1 = 1.0 here.
    assert_close(np.asarray(norm.var[...]), [1.1], tolerance=Tolerance(1e-7, 1e-6), what="var: 0.9 * 1 + 0.1 * 2")
    norm.eval()
    expected = (np.array([0.0, 2.0]) - 0.1) / np.sqrt(1.1 + 1e-5)
    assert_close(np.asarray(norm(batch)).ravel(), expected, tolerance=Tolerance(1e-7, 1e-6), what="eval")


# --- every architecture against the torch backend -------------------------------------------------


ARCHITECTURES = builtin_params(builtin_networks(), default=PART_COVERING_PRESETS - frozenset(TIMM_PRESETS))
"""By default the part-covering built-ins that tests/test_timm_presets.py does not compare module by
module in every backend (test_all_backends_agree, eval mode, at 33×33); all in the slow tail. What
train mode adds (batch statistics, running statistics) is batch_norm's, alike in every part: these
run it in their blocks, stems and heads."""


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_matches_torch_backend_block_by_block(name: str) -> None:
    graph = compile_spec(name, size=SMALL_SIZE)
    weights = random_weights(graph, seed=1)
    flax = flax_model(graph, weights, abstract=name not in SLOW_ARCHITECTURES)
    reference = torch_model(graph, weights)
    assert_weights_equal(flax_backend.to_weights(flax, graph), weights, what="canonical -> flax -> canonical")
    # 8 images: at 32×32 the last stage has 1×1 maps, and BatchNorm over fewer values per channel
    # amplifies float32 rounding (batch 4: up to 2e-5 relative, in torch as in flax).
    batch = images(graph, seed=2, batch=8)

    # One training step: batch statistics normalise; running statistics move (unbiased variance).
    # Whole-network runs are compared at 224 only: at 32×32 the last stages normalise over 8-32
    # values per channel, which amplifies float32 rounding (plain34, 4 images: torch's own float32
    # logits are 2e-3 from its float64 ones).
    flax.train()
    reference.train()
    compare_with_torch(flax, reference, graph, batch, whole_network=None)

    eval_weights = weights
    if name in OVERFLOWS_IN_EVAL:
        calibrate(reference, images(graph, seed=4, batch=4))
        eval_weights = torch_backend.to_weights(reference, graph)
    flax_backend.load_weights(flax, graph, eval_weights)
    torch_backend.load_weights(reference, graph, eval_weights)
    flax.eval()
    reference.eval()
    # 600 blocks accumulate rounding past 1e-5 of scale (layer1.118: 1.02e-5): logits tolerance there.
    # So do pre-activation nets, whose residual stream is never normalised (preact_resnet110's
    # layer3.1: 1.01e-5 of scale; BiT's stages.2.blocks.5: 1.03e-5).
    logits_only = name in OVERFLOWS_IN_EVAL or name in PRE_ACTIVATION
    whole_network: Literal["every module", "logits"] = "logits" if logits_only else "every module"
    compare_with_torch(flax, reference, graph, batch, whole_network=whole_network)


def test_custom_parts_match_torch_backend(tmp_path: Path) -> None:
    """Ops and attributes no built-in uses: average pools (count_include_pad false, and with the
    block's stride, held as a ``partial``), a conv bias, BatchNorm momentum 0.3 and epsilon 1e-3."""
    network = write_parts(
        tmp_path,
        {
            "net.yaml": "name: custom\ninput: {channels: 3, size: 16}\nstem: pooled\nblock: basic\n"
            "shortcut: {where_shapes_match: identity, where_shapes_change: average}\n"
            "stages:\n  - {depth: 2, width: 8}\n  - {depth: 2, width: 16, stride: 2}\n"
            "head_parameters: {classes: 5}\n",
            "stems/pooled.yaml": "name: pooled\nparameters: {width: 8}\nnodes:\n"
            "  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1, bias: true}\n"
            "  bn1: {op: batch_norm, momentum: 0.3, epsilon: 0.001}\n"
            "  relu: {op: relu}\n"
            "  pool: {op: avg_pool, kernel: 3, stride: 2, padding: 1, count_include_pad: false}\n",
            "shortcuts/average.yaml": "name: average\nmodule: downsample\nnodes:\n"
            "  pool: {op: avg_pool, kernel: stride, stride: stride}\n"
            "  conv: {op: conv, out_channels: out_channels, kernel: 1}\n"
            "  bn: {op: batch_norm}\n",
        },
    )
    graph = compile_spec(network)
    source = flax_backend.emit_source(graph)
    assert "BatchNorm(8, momentum=0.7, epsilon=0.001)" in source
    assert "nnx.avg_pool, window_shape=(stride, stride), strides=(stride, stride)" in source
    assert "count_include_pad=False" in source
    weights = random_weights(graph, seed=1)
    flax = flax_model(graph, weights)
    reference = torch_model(graph, weights)
    batch = images(graph, seed=2, batch=8)
    modes: tuple[tuple[str, Literal["every module", "logits"]], ...] = (("eval", "every module"), ("train", "logits"))
    for mode, whole_network in modes:
        getattr(flax, mode)()
        getattr(reference, mode)()
        compare_with_torch(flax, reference, graph, batch, whole_network=whole_network)


# --- resnet50 at 224×224, jitted ------------------------------------------------------------------


@dataclass
class Resnet50:
    graph: Graph
    weights: Weights
    flax: nnx.Module
    torch: nn.Module
    images: np.ndarray


@pytest.fixture(scope="module")
def resnet50() -> Resnet50:
    """One flax and one torch resnet50 shared by the 224×224 tests (jit compiles once per mode);
    each test loads the weights and sets the mode it needs."""
    graph = compile_spec("resnet50")
    weights = random_weights(graph, seed=0)
    return Resnet50(graph, weights, flax_model(graph, weights), torch_model(graph, weights), images(graph, seed=1))


def test_resnet50_224_eval_random_weights(resnet50: Resnet50) -> None:
    flax_backend.load_weights(resnet50.flax, resnet50.graph, resnet50.weights)
    torch_backend.load_weights(resnet50.torch, resnet50.graph, resnet50.weights)
    resnet50.flax.eval()
    resnet50.torch.eval()
    assert len(flax_backend.block_outputs(resnet50.flax, resnet50.images)) == 1 + 16 + 1
    compare_with_torch(resnet50.flax, resnet50.torch, resnet50.graph, resnet50.images, "every module", jit=True)


def test_resnet50_224_eval_calibrated_logits_within_1e4(resnet50: Resnet50) -> None:
    torch_backend.load_weights(resnet50.torch, resnet50.graph, resnet50.weights)
    calibrate(resnet50.torch, images(resnet50.graph, seed=7, batch=4))
    flax_backend.load_weights(resnet50.flax, resnet50.graph, torch_backend.to_weights(resnet50.torch, resnet50.graph))
    resnet50.flax.eval()
    compare_with_torch(resnet50.flax, resnet50.torch, resnet50.graph, resnet50.images, "logits", jit=True)


def test_resnet50_224_one_training_step(resnet50: Resnet50) -> None:
    flax_backend.load_weights(resnet50.flax, resnet50.graph, resnet50.weights)
    torch_backend.load_weights(resnet50.torch, resnet50.graph, resnet50.weights)
    resnet50.flax.train()
    resnet50.torch.train()
    compare_with_torch(resnet50.flax, resnet50.torch, resnet50.graph, resnet50.images, "logits", jit=True)


def test_torchvision_resnet50_weights_give_torchvisions_outputs(resnet50: Resnet50) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    # One training pass so that the running statistics are not torchvision's initial 0 and 1.
    reference.train()
    with torch.no_grad():
        reference(torch.from_numpy(images(resnet50.graph, seed=8, batch=4)))
    reference.eval()
    flax_backend.load_weights(resnet50.flax, resnet50.graph, torch_backend.to_weights(reference, resnet50.graph))
    resnet50.flax.eval()
    compare_with_torch(resnet50.flax, reference, resnet50.graph, resnet50.images, "every module", jit=True)


# --- jit, zero init, weights ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_nnx_jit_and_jax_jit_match_torch(mode: str) -> None:
    graph = compile_spec("resnet20")
    weights = random_weights(graph, seed=1)
    batch = images(graph, seed=2)
    reference = torch_model(graph, weights)
    getattr(reference, mode)()
    expected = torch_backend.block_outputs(reference, graph, batch)["head"]
    nhwc = batch.transpose(0, 2, 3, 1)

    model = flax_model(graph, weights)
    getattr(model, mode)()
    logits = nnx.jit(lambda model, x: model(x))(model, nhwc)
    assert_close(np.asarray(logits), expected, tolerance="network", what="nnx.jit logits")
    if mode == "train":
        assert_running_statistics_close(model, reference, graph)

    model = flax_model(graph, weights)
    getattr(model, mode)()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state: nnx.State[Any, Any], x: jax.Array) -> tuple[jax.Array, nnx.State[Any, Any]]:
        module = nnx.merge(graphdef, state)
        return module(x), nnx.state(module)

    logits, state = forward(state, nhwc)
    nnx.update(model, state)
    assert_close(np.asarray(logits), expected, tolerance="network", what="jax.jit logits")
    if mode == "train":
        assert_running_statistics_close(model, reference, graph)


@pytest.fixture(scope="module")
def zero_init_resnet20() -> tuple[Graph, nnx.Module]:
    """resnet20 initialised by the generated code itself (eagerly) with ``zero_init_residual``."""
    graph = compile_spec("resnet20")
    return graph, flax_backend.build_module(graph, seed=1, zero_init_residual=True)


def identity_pairs(graph: Graph, model: nnx.Module, mode: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(output, relu(input)) of every block with an identity shortcut."""
    getattr(model, mode)()
    outputs = flax_backend.block_outputs(model, images(graph, seed=2), jit=False)
    names = list(outputs)
    return {
        block.path: (outputs[block.path], np.maximum(outputs[names[names.index(block.path) - 1]], 0))
        for block in graph.blocks
        if block.shortcut == "identity"
    }


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_zero_init_blocks_with_identity_shortcuts_are_identities(
    name: str, mode: str, zero_init_resnet20: tuple[Graph, nnx.Module]
) -> None:
    """With the residual branch's last BatchNorm zeroed, an identity-shortcut block computes
    relu(input) exactly; without it, it does not (so this check can fail)."""
    graph = compile_spec(name, size=SMALL_SIZE)
    models = [flax_model(graph, initial_weights(graph, seed=1, zero_init_residual=True))]
    if name == "resnet20":
        models.append(zero_init_resnet20[1])  # the generated code's own zero_init_residual
    for model in models:
        pairs = identity_pairs(graph, model, mode)
        assert pairs
        for path, (output, relu_input) in pairs.items():
            assert_close(output, relu_input, tolerance=EXACT, what=f"{path}: output vs relu(input)")
    pairs = identity_pairs(graph, flax_model(graph, initial_weights(graph, seed=1)), mode)
    assert all(np.abs(output - relu_input).max() > 1e-3 for output, relu_input in pairs.values())


def test_generated_zero_init_zeroes_the_same_batch_norms_as_canonical_init(
    zero_init_resnet20: tuple[Graph, nnx.Module],
) -> None:
    graph, model = zero_init_resnet20
    generated = flax_backend.to_weights(model, graph)
    canonical = initial_weights(graph, zero_init_residual=True)
    zeroed = {name for name, array in canonical.items() if name.endswith(".weight") and not array.any()}
    assert len(zeroed) == 9 and all(name.endswith(".bn2.weight") for name in zeroed)
    assert {name for name, array in generated.items() if name.endswith(".weight") and not array.any()} == zeroed


def test_strict_weights_list_missing_unexpected_and_misshaped_keys() -> None:
    graph = compile_spec("resnet20")
    model = flax_model(graph, random_weights(graph))
    weights = random_weights(graph, seed=1)
    del weights["layer2.1.bn1.running_var"]
    weights["layer4.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    weights["layer1.0.conv2.weight"] = weights["layer1.0.conv2.weight"].transpose(2, 3, 1, 0)
    with pytest.raises(RescompileError) as error:
        flax_backend.load_weights(model, graph, weights)
    message = str(error.value)
    assert "missing: layer2.1.bn1.running_var" in message
    assert "unexpected: layer4.0.conv1.weight" in message
    assert "mis-shaped: layer1.0.conv2.weight (3, 3, 16, 16) (expected (16, 16, 3, 3))" in message


def test_strict_weights_check_the_models_state_against_the_graph() -> None:
    small, large = compile_spec("resnet20"), compile_spec("resnet32")
    small_model = flax_model(small, random_weights(small))
    missing = r"does not fit resnet32: missing: layer1/3/conv1/kernel, layer1/3/bn1/scale"
    with pytest.raises(RescompileError, match=missing):
        flax_backend.load_weights(small_model, large, random_weights(large))
    large_model = flax_model(large, random_weights(large))
    with pytest.raises(RescompileError, match=r"state does not fit resnet20: unexpected: layer1/3/bn1/bias"):
        flax_backend.to_weights(large_model, small)
    layer(small_model, "fc").kernel = nnx.Param(np.zeros((3, 3), np.float32))
    with pytest.raises(RescompileError, match=r"mis-shaped: fc/kernel \(3, 3\) \(expected \(64, 10\)\)"):
        flax_backend.load_weights(small_model, small, random_weights(small))


def test_weight_layouts_and_safetensors_round_trip(tmp_path: Path) -> None:
    graph = compile_spec("resnet50", size=SMALL_SIZE)
    weights = random_weights(graph, seed=3)
    model = flax_model(graph, weights)
    # The layouts, spelled out: OIHW -> HWIO, (out, in) -> (in, out), BatchNorm names.
    conv = weights["layer2.0.downsample.0.weight"]
    kernel = np.asarray(layer(model, "layer2.0.downsample.layers.0.kernel")[...])
    assert_close(kernel, conv.transpose(2, 3, 1, 0), tolerance=EXACT, what="downsample kernel")
    assert_close(np.asarray(layer(model, "fc.kernel")[...]), weights["fc.weight"].T, tolerance=EXACT, what="fc kernel")
    assert_close(np.asarray(layer(model, "bn1.var")[...]), weights["bn1.running_var"], tolerance=EXACT, what="bn1 var")

    path = tmp_path / "resnet50.safetensors"
    save_weights(flax_backend.to_weights(model, graph), path)
    fresh = flax_model(graph, initial_weights(graph))
    flax_backend.load_weights(fresh, graph, read_weights(path))
    restored = flax_backend.to_weights(fresh, graph)
    assert_weights_equal(restored, weights, what="canonical -> flax -> safetensors -> flax -> canonical")


@pytest.mark.parametrize(
    "name",
    network_params(
        # random running statistics overflow float32 in eval mode
        [name for name in builtin_networks() if name not in OVERFLOWS_IN_EVAL],
        COMPILE_TEST_PRESETS,
    ),
)
def test_the_generated_module_compiles_under_nnx_jit(name: str, tmp_path: Path) -> None:
    """``nnx.jit`` traces the whole module (no Python-level value reaches a traced one), and the
    jitted forward computes the torch backend's logits (torch runs eagerly: faster than Flax op by op)."""
    graph = compile_spec(network_source(name, tmp_path), size=SMALL_SIZE)
    weights = random_weights(graph, seed=1)
    model = flax_model(graph, weights)
    model.eval()
    batch = images(graph, seed=2)
    expected = torch_backend.block_outputs(torch_model(graph, weights).eval(), graph, batch)["head"]
    jitted = nnx.jit(lambda model, x: model(x))(model, batch.transpose(0, 2, 3, 1))
    assert np.isfinite(expected).all()
    assert_close(np.asarray(jitted), expected, tolerance="network", what=f"{name} under nnx.jit")
