#!/usr/bin/env bash
# mypy --strict on every package (the package root, spec/, compiler/ and backends/), the reference
# model `rescompile bench` loads from benchmarks/, the experiments/ and scripts/reference_pages.py.
# NOTE: the other benchmark scripts were never checked and do not pass yet.
# The folders are installed as subpackages of `rescompile` (see pyproject.toml), a mapping mypy
# cannot follow through the editable install, so we check a symlinked `rescompile/` tree instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/rescompile"
for file in "$root"/rescompile/*.py "$root"/rescompile/py.typed; do ln -s "$file" "$tree/rescompile/"; done
for folder in spec compiler backends; do ln -s "$root/$folder" "$tree/rescompile/$folder"; done
for folder in benchmarks experiments; do ln -s "$root/$folder" "$tree/$folder"; done
ln -s "$root/scripts/reference_pages.py" "$tree/"
cd "$tree"
# The scripts are not packages: each runs from its own folder, which mypy puts on the search path too.
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --strict rescompile \
    benchmarks/handwritten_flax_resnet50.py experiments/*.py reference_pages.py
