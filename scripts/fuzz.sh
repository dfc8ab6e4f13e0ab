#!/usr/bin/env bash
# The API fuzzer: schemathesis reads the server's own /openapi.json, sends requests the
# document allows and requests it forbids (its examples, the edges of every constraint,
# random data, and sequences that follow the document's links: create an order, then read,
# watch and cancel it), and fails on any answer the document does not predict: a 5xx, a
# status or header or body it does not list, a valid request refused, an invalid one
# accepted, a route that ignores a missing token. Every check is on.
#
# It runs against the order-server binary that `cargo test --workspace --all-features`
# builds (built here if missing), twice: in memory, open; and on PostgreSQL (a database of its
# own on TEST_DATABASE_URL, created and dropped here) with API_TOKEN set. Each run has a
# time budget (FUZZ_SECONDS, 40 by default). `scripts/fuzz.sh memory` or `scripts/fuzz.sh
# postgres` runs one of the two.
#
# schemathesis comes from PyPI at the version in scripts/fuzz-requirements.txt, installed once
# into a virtual environment under the target directory. A machine without Python 3 and venv,
# or that cannot reach PyPI, says so and skips, as the browser test does; under CI, as root,
# Python is installed from Debian's packages, and a fuzzer that cannot run fails the run.
# scripts/test.sh runs this after the tests; alone, it finds a PostgreSQL server as
# scripts/test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> fuzz: %s\n' "$*"; }

backends=${1:-memory,postgres}
case $backends in
memory | postgres | memory,postgres) ;;
*)
  echo "usage: scripts/fuzz.sh [memory|postgres]" >&2
  exit 2
  ;;
esac

root=$PWD
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target="$root/$target"
budget=${FUZZ_SECONDS:-40}

# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh

# Why the fuzzer cannot run here: under CI, a failure; elsewhere, a skip.
cannot_run() {
  if [[ -n ${CI:-} ]]; then
    echo "error: the API fuzzer cannot run under CI: $*" >&2
    exit 1
  fi
  echo "skipped: $*"
  exit 0
}

# The fuzzer's environment: created when missing, refreshed when the pinned version changes.
venv="$target/fuzz-venv"
requirements=scripts/fuzz-requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  # Debian ships venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if may_install_packages; then
      apt_install -qq python3 python3-venv || exit 1
    else
      cannot_run "Python 3 with venv is not installed (sudo apt-get install python3 python3-venv)"
    fi
  fi
  say "installing $(grep -v '^#' "$requirements" | xargs) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || cannot_run "python3 -m venv $venv failed"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"; then
    rm -rf "$venv"
    cannot_run "schemathesis could not be installed from PyPI (pip install -r $requirements)"
  fi
  cp "$requirements" "$venv/requirements.txt"
fi

# The binary the tests build: with the tests' flags, so that after them nothing is rebuilt (a
# plain `cargo build` resolves other features and builds the dependency tree a second time).
cargo test --quiet --workspace --all-features --no-run
server_bin="$target/debug/order-server"

if [[ $backends == *postgres* && -z ${TEST_DATABASE_URL:-} ]]; then
  ensure_postgres
fi

# A port nothing listens on, from the kernel.
free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_pid=""
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
pg_at_exit stop_server

fuzz_db="order_fuzz_$$"
drop_fuzz_db() {
  if [[ -n ${fuzz_db:-} ]]; then
    pg_psql "$TEST_DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $fuzz_db WITH (FORCE)" || true
    fuzz_db=""
  fi
}

logs=$(mktemp -d)
remove_logs() { rm -rf "$logs"; }
pg_at_exit remove_logs

# fuzz NAME [VAR=VALUE...] [-- SCHEMATHESIS-ARGS...]: serves the API with the settings given,
# fuzzes it, stops it, and says how many cases ran.
fuzz() {
  local name=$1 port started output cases ready=""
  shift
  local env=() args=()
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      args=("$@")
      break
    fi
    env+=("$1")
    shift
  done
  port=$(free_port)
  env HOST=127.0.0.1 PORT="$port" RUST_LOG=warn "${env[@]}" \
    "$server_bin" >"$logs/$name.log" 2>&1 &
  server_pid=$!
  # Ready within 30 s (PostgreSQL migrations included), or the run fails.
  started=$SECONDS
  while ((SECONDS - started < 30)); do
    if "$venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$port/readyz" 2>/dev/null; then
      ready=1
      break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$logs/$name.log" >&2
      echo "error: the server ($name) exited before it was ready" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [[ -z $ready ]]; then
    cat "$logs/$name.log" >&2
    echo "error: the server ($name) was not ready within 30 s" >&2
    exit 1
  fi
  started=$SECONDS
  output="$logs/$name.out"
  say "$name: schemathesis on http://127.0.0.1:$port, ${budget} s"
  # Hypothesis keeps its example database under the working directory; a run starts clean.
  if ! (cd "$logs" && PYTHONPATH="$root/scripts" SCHEMATHESIS_HOOKS=fuzz_hooks \
    "$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" \
    run "http://127.0.0.1:$port/openapi.json" \
    --checks all --phases examples,coverage,fuzzing,stateful \
    --max-time "$budget" --workers 1 --no-color --output-truncate false \
    "${args[@]}") >"$output" 2>&1; then
    cat "$output"
    echo "--- server log ($name) ---"
    tail -n 50 "$logs/$name.log"
    echo "error: the API fuzzer found failures ($name)" >&2
    exit 1
  fi
  stop_server
  cases=$(grep -Eo '[0-9]+ generated' "$output" | tail -n 1 | grep -Eo '[0-9]+' || echo "?")
  grep -E '^ +(Scenarios|API Links):|^Filtered:' "$output" | sed 's/^ */    /' || true
  say "$name: $cases cases, no failures, in $((SECONDS - started)) s"
}

# In memory, no workers: every order stays PENDING, so that cancelling a real order succeeds
# and its event stream sends the order as it is (and then nothing, until it is cancelled).
if [[ $backends == *memory* ]]; then
  fuzz "in memory, open" WORKERS=0
fi
if [[ $backends != *postgres* ]]; then
  exit 0
fi

pg_psql "$TEST_DATABASE_URL" -q -c "CREATE DATABASE $fuzz_db"
pg_at_exit drop_fuzz_db
token="fuzz-$$-$RANDOM$RANDOM"
# On PostgreSQL, orders are processed in 20 ms, so that their event streams go through
# PROCESSING to COMPLETED and end while the fuzzer reads them, and a late cancel conflicts.
fuzz "PostgreSQL, API_TOKEN" PROCESSING_DELAY_MS=20 \
  DATABASE_URL="$(pg_url_with_database "$TEST_DATABASE_URL" "$fuzz_db")" API_TOKEN="$token" \
  -- --header "Authorization: Bearer $token"
stop_server
drop_fuzz_db
