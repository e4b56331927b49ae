#!/usr/bin/env bash
# mypy --strict on every package: the package root, spec/, compiler/ and backends/; and on
# scripts/reference_pages.py, which imports them.
# The folders are installed as subpackages of `rescompile` (see pyproject.toml), a mapping mypy
# cannot follow through the editable install, so we check a symlinked `rescompile/` tree instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/rescompile"
for file in "$root"/rescompile/*.py "$root"/rescompile/py.typed; do ln -s "$file" "$tree/rescompile/"; done
for folder in spec compiler backends; do ln -s "$root/$folder" "$tree/rescompile/$folder"; done
ln -s "$root/scripts/reference_pages.py" "$tree/"
cd "$tree"
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --strict -p rescompile -m reference_pages
