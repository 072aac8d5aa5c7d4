#!/usr/bin/env bash
# Run the README's export snippets for one framework group in its own venv, at pinned versions:
#   bash examples/export/run.sh torch        # pytorch, huggingface, sklearn (and the labels snippet)
#   bash examples/export/run.sh tensorflow   # keras, tensorflow
#   bash examples/export/run.sh paddle       # paddle
# Each snippet's file is then inspected and built into a Z by this clone's onnxmerge (.venv, the Quick start's).
set -euo pipefail
cd "$(dirname "$0")/../.."
group="$1"
venv=".venv-export-$group"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    if [ "$group" = torch ]; then "$venv/bin/pip" install -q torch==2.13.0; fi  # the CPU wheel, on its own first
    "$venv/bin/pip" install -q -r "examples/export/requirements-$group.txt"
fi
case "$group" in
    torch) frameworks="pytorch huggingface sklearn" ;;
    tensorflow) frameworks="keras tensorflow" ;;
    paddle) frameworks="paddle" ;;
    *) echo "unknown group $group (torch, tensorflow, paddle)" >&2; exit 2 ;;
esac
for framework in $frameworks; do
    "$venv/bin/python" examples/export/check.py "$framework" --onnxmerge .venv/bin/onnxmerge
done
