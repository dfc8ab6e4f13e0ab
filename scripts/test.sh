#!/usr/bin/env bash
# The one test command: formatting, lints, every test, the docs, the examples run and the
# benches built. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    step "installing the $2 component"
    rustup component add "$2"
  fi
}
need_component fmt rustfmt
need_component clippy clippy

started=$SECONDS

# The PostgreSQL helpers; the server itself is found (or started) just before the tests, so
# that formatting and lints run even on a machine without one.
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# TEST_DATABASE_URL, else DATABASE_URL, else a server on 127.0.0.1:5432, else a private
# cluster stopped on exit; exports TEST_DATABASE_URL and PG_BINDIR, unsets DATABASE_URL.
step "PostgreSQL"
ensure_postgres

step "tests (cargo test)"
cargo test --workspace --all-features

# The history checker (checker/) runs concurrent clients against the order-server binary the
# tests above built (same flags, so nothing is rebuilt), then checks everything they saw; a
# violation fails the run. In memory without kills: a killed in-memory server loses its orders
# by design. On PostgreSQL with server kills and an immediate restart of the database, on a
# private cluster the checker starts itself from PG_BINDIR, so that it may restart it. The seed
# changes from run to run (CHECKER_SEED fixes it) and is printed.
checker="${CARGO_TARGET_DIR:-target}/debug/order-checker"
checker_seed=${CHECKER_SEED:-$RANDOM}

step "history checker (in memory)"
"$checker" --backend memory --clients 8 --duration 20 --seed "$checker_seed"

step "history checker (PostgreSQL, with faults)"
"$checker" --backend postgres --clients 8 --duration 30 --faults --kills 2 \
  --database-restarts 1 --seed "$checker_seed"

step "docs (cargo doc, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "example: embedded"
cargo run --quiet -p examples --example embedded

step "example: retries"
cargo run --quiet -p examples --example retries

step "example: nest_in_axum (serves on 127.0.0.1 and checks itself over HTTP)"
cargo run --quiet -p examples --example nest_in_axum

step "example: postgres"
example_db="order_example_$$"
drop_example_db() {
  if [[ -n ${example_db:-} ]]; then
    pg_psql "$TEST_DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $example_db WITH (FORCE)"
    example_db=""
  fi
}
pg_psql "$TEST_DATABASE_URL" -q -c "CREATE DATABASE $example_db"
pg_at_exit drop_example_db # also when the example fails
DATABASE_URL=$(pg_url_with_database "$TEST_DATABASE_URL" "$example_db") \
  cargo run --quiet -p examples --example postgres
drop_example_db

# The dashboard in a real browser: e2e/ drives the machine's Chromium with playwright-core (no
# browser is downloaded) against the order-server binary. A machine without Chromium or
# Node.js says how to install them and goes on; under CI, as root, they are installed from
# Debian's packages, and a browser test that cannot run (not root, Node.js too old, a bad
# CHROMIUM, no registry) fails the run, as a failing one does. CHROMIUM names another browser.
step "browser test (headless Chromium)"
e2e_skip=""
# Under CI as root, installs Debian packages (a failure fails the run); elsewhere returns 1, so
# that the caller skips.
ci_apt_install() {
  may_install_packages || return 1
  apt_install -qq "$@" || exit 1
}
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [[ -x $chromium_bin ]]; then
  :
elif [[ -n ${CHROMIUM:-} ]]; then
  e2e_skip="CHROMIUM=$CHROMIUM is not an executable"
elif ! ci_apt_install chromium; then
  e2e_skip="Chromium is not installed (sudo apt-get install chromium)"
fi
if [[ -z $e2e_skip ]] && ! command -v node >/dev/null 2>&1; then
  ci_apt_install nodejs npm || e2e_skip="Node.js is not installed (sudo apt-get install nodejs npm)"
fi
if [[ -z $e2e_skip ]] && ! command -v npm >/dev/null 2>&1; then
  ci_apt_install npm || e2e_skip="npm is not installed (sudo apt-get install npm)"
fi
if [[ -z $e2e_skip ]] && (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
  e2e_skip="Node.js 20 or later is needed; this machine has $(node --version)"
fi
# playwright-core from the npm registry, at the locked version: installed when it is not
# already. A machine that cannot reach the registry skips (under CI, that fails the run).
if [[ -z $e2e_skip ]]; then
  locked=$(node -p 'require("./e2e/package-lock.json").packages["node_modules/playwright-core"].version')
  installed=$(node -p 'try { require("./e2e/node_modules/playwright-core/package.json").version } catch { "" }')
  if [[ $installed != "$locked" ]] && ! npm ci --prefix e2e --no-audit --no-fund --loglevel=error; then
    [[ -z ${CI:-} ]] || exit 1
    e2e_skip="playwright-core $locked could not be installed from the npm registry (npm ci --prefix e2e)"
  fi
fi
if [[ -n $e2e_skip && -n ${CI:-} ]]; then
  echo "error: the browser test cannot run under CI: $e2e_skip" >&2
  exit 1
elif [[ -n $e2e_skip ]]; then
  echo "skipped: $e2e_skip"
else
  # The binary the tests above built (same flags, so nothing is rebuilt): a plain `cargo build`
  # resolves other features and would build the dependency tree a second time.
  cargo test --quiet --workspace --all-features --no-run
  CHROMIUM=$chromium_bin ORDER_SERVER_BIN="${CARGO_TARGET_DIR:-target}/debug/order-server" \
    npm test --prefix e2e
fi

# The API fuzzer: schemathesis (from PyPI, into target/fuzz-venv) against the binary the
# tests built, in memory and on PostgreSQL behind tokens, with every check on; about a minute
# for each. See scripts/fuzz.sh.
step "API fuzzer (schemathesis)"
scripts/fuzz.sh

# Known vulnerabilities in the dependency tree (RustSec), when cargo-audit is installed. It
# needs the advisory database, which it fetches over git: a machine that cannot reach it says
# so and goes on; a vulnerability found fails the run.
step "advisories (cargo audit)"
if ! cargo audit --version >/dev/null 2>&1; then
  echo "skipped: cargo-audit is not installed (cargo install cargo-audit --locked)"
else
  audit_log=$(mktemp)
  if cargo audit 2>&1 | tee "$audit_log"; then
    :
  elif grep -qiE "couldn't fetch|failed to fetch|could not resolve|network|unable to access" "$audit_log"; then
    echo "skipped: the advisory database could not be fetched from this machine"
  else
    rm -f "$audit_log"
    exit 1
  fi
  rm -f "$audit_log"
fi

step "benches build"
cargo bench -p benches --no-run

step "all checks passed in $((SECONDS - started)) s"
