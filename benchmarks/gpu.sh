#!/usr/bin/env bash
# The GPU ratios of issue #12, item 3, in one go (about 5 minutes on an H100): rescompile bench
# runs each generated model interleaved with its reference and prints the ratio; the ratios are
# repeated together at the end.
#
#   benchmarks/gpu.sh                 on a CUDA GPU: resnet50, bf16, channels_last, batch 256
#   benchmarks/gpu.sh --cpu-dry-run   the same commands on the CPU at a tiny size (checks the script)
#
# Needs a CUDA build of torch (and torchvision), and for the Flax lines a CUDA jaxlib
# (pip install 'jax[cuda12]'); the Flax lines are skipped with a note when jax sees no GPU.
# cudnn.benchmark is on for both models of every torch line (bench turns it on for --device cuda).
# The progress bars go to stderr; the log of ratios is built from stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
rescompile=${RESCOMPILE:-.venv/bin/rescompile}

if [[ ${1:-} == --cpu-dry-run ]]; then
    common=(--device cpu --dtype bf16 --batch 2 --size 64 --rounds 2 --warmup 1)
else
    common=(--device cuda --dtype bf16 --batch 256 --rounds 10 --warmup 3)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {
    echo "== rescompile bench resnet50 $*" | tee -a "$log"
    if ! "$rescompile" bench resnet50 "${common[@]}" "$@" | tee -a "$log"; then
        echo "(failed: rescompile bench resnet50 $*)" | tee -a "$log"
    fi
}

# Inference: the lowering (BatchNorm folded, channels_last) against torch.compile'd torchvision.
run --inference --compile --channels-last
# Training steps against torchvision eager, then both compiled.
run --train --channels-last
run --train --compile --channels-last
# Flax against the hand-written Flax ResNet-50, inference and training, both under jax.jit.
run --backend flax --compile
run --backend flax --compile --train

echo
echo "== every ratio (candidate / reference, images/s; goal: each >= 1.0)"
grep -E '^(== |ratio )' "$log" | grep -B1 '^ratio ' | grep -v '^--$' || echo "(no ratios printed)"
