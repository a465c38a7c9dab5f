#!/bin/sh
# From a fresh clone, one command: a chat bundle of Qwen2.5-Coder-0.5B, built and opened.
#
#   sh build/quickstart.sh            # build (or reuse) everything, then launch the bundle
#   NO_LAUNCH=1 sh build/quickstart.sh  # build only
#
# Idempotent: the venv, the model (~/.cache/chatfile/models) and the stub
# (~/.cache/chatfile/stubs; both under $CHATFILE_CACHE_DIR when set) are reused when
# present; the bundle is rewritten (seconds).
set -eu

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-./qwen2.5-coder-0.5b.chatfile}"

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python

# Reinstall only when pyproject.toml changed since the last install.
STAMP=.venv/.chatfile-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "== installing chatfile[build,test] into .venv (test: what the README's test command needs)"
    "$VPY" -m pip install --quiet --upgrade pip
    "$VPY" -m pip install --quiet -e '.[build,test]'
    touch "$STAMP"
fi

echo "== fetching the default model (cached after the first time)"
MODEL="$("$VPY" -m bundler.models fetch)"
echo "   $MODEL"

echo "== bundling (builds the runtime stub once, about a minute; then a byte splice)"
.venv/bin/chatfile bundle "$MODEL" -o "$OUT" --title "Qwen2.5 Coder 0.5B" --force

if [ "${NO_LAUNCH:-}" = "" ]; then
    echo "== launching $OUT (close this window or press Ctrl+C to stop)"
    exec "$OUT"
fi
