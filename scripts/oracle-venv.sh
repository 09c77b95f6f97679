#!/usr/bin/env bash
# Create .oracle-venv/: LangGraph's own Agent Server (`langgraph dev`, langgraph-api), the oracle
# tests/agentapi/test_oracle.py compares graphwire's Agent Server API with. It has its own venv
# because it pins its own versions; the project's .venv is left alone. Idempotent: a stamp of the
# requirements skips a second install. Extra requirements (the tests pass the project's langgraph
# and langchain-core versions, so both servers run the same graph library) come as arguments.
#   scripts/oracle-venv.sh [REQUIREMENT ...]      (ORACLE_VENV=path overrides .oracle-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ORACLE_VENV:-.oracle-venv}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=("langgraph-cli[inmem]==0.4.40" "langgraph-api==0.16.7" "$@")
STAMP="$VENV/.installed-$(printf '%s\n' "${REQUIREMENTS[@]}" | cksum | cut -d' ' -f1)"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"          # one install at a time (several pytest processes may ask)
flock 9
if [ -f "$STAMP" ] && [ -x "$VENV/bin/langgraph" ]; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "${REQUIREMENTS[@]}"
touch "$STAMP"
