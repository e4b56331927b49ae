#!/usr/bin/env bash
# mypy --strict on every package (the package root, spec/, compiler/ and backends/), the reference
# model `rescompile bench` loads from benchmarks/, the experiments/, scripts/reference_pages.py and
# the tests.
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
ln -s "$root/tests" "$tree/tests"
cd "$tree"
# The scripts are not packages: each runs from its own folder, which mypy puts on the search path too.
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --strict rescompile \
    benchmarks/handwritten_flax_resnet50.py experiments/*.py reference_pages.py
# The tests import conftest.py and support.py from their folder, and the experiment from experiments/
# (test_degradation puts it on sys.path), so they are checked as scripts with those folders on the path.
# tests/golden/ holds generated source kept byte for byte, which is data to the tests, not test code.
MYPYPATH="$tree/tests:$tree/experiments" "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --strict \
    --explicit-package-bases --exclude 'tests/golden/' tests
