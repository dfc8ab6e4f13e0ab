#!/usr/bin/env bash
# The one test command: formatting, lints, every test, the docs, the examples run and the
# benches built. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's line says when it started, in seconds from the first: where the time goes.
step() { printf '\n==> [%d s] %s\n' "$((SECONDS - ${started:-$SECONDS}))" "$*"; }

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
# shellcheck source=scripts/pgbouncer.sh
source scripts/pgbouncer.sh

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# TEST_DATABASE_URL, else DATABASE_URL, else a server on 127.0.0.1:5432, else a private
# cluster stopped on exit; exports TEST_DATABASE_URL and PG_BINDIR, unsets DATABASE_URL.
step "PostgreSQL"
ensure_postgres

# The tests through PgBouncer in transaction mode start their own from PGBOUNCER. Under CI as
# root a missing one is installed (Debian's package, its service stopped); elsewhere they skip,
# each saying so, and under CI without one they fail.
step "PgBouncer"
pgbouncer_skip=""
if ! ensure_pgbouncer; then
  [[ -z ${CI:-} ]] || exit 1
  pgbouncer_skip="pgbouncer is not installed (sudo apt-get install pgbouncer)"
  echo "skipped: the tests through PgBouncer ($pgbouncer_skip)"
fi

step "tests (cargo test)"
cargo test --workspace --all-features

# The history checker (checker/) runs concurrent clients against the order-server binary the
# tests above built (same flags, so nothing is rebuilt), then checks everything they saw; a
# violation fails the run. In memory without kills: a killed in-memory server loses its orders
# by design. On PostgreSQL with server kills and an immediate restart of the database, on a
# private cluster the checker starts itself from PG_BINDIR, so that it may restart it; there
# each order runs as three simulated steps (PROCESSING_STEPS), so that kills and cancels land
# between checkpoints and mid-step. In both, a tenth of the orders fail for good
# (--failure-rate), and the clients retry the ones they see FAILED. The seed changes from run
# to run (CHECKER_SEED fixes it) and is printed.
checker="${CARGO_TARGET_DIR:-target}/debug/order-checker"
checker_seed=${CHECKER_SEED:-$RANDOM}

step "history checker (in memory)"
"$checker" --backend memory --clients 8 --duration 20 --failure-rate 0.1 --seed "$checker_seed"

step "history checker (PostgreSQL, with faults, orders in steps)"
"$checker" --backend postgres --clients 8 --duration 30 --faults --kills 2 \
  --database-restarts 1 --processing-steps reserve,charge,ship --processing-delay-ms 40 \
  --failure-rate 0.1 --seed "$checker_seed"

# Shorter: what differs through the pooler is how statements travel and that the server polls
# (no LISTEN URL), not the rules.
step "history checker (PostgreSQL through PgBouncer in transaction mode, polling, with faults)"
if [[ -n $pgbouncer_skip ]]; then
  echo "skipped: $pgbouncer_skip"
else
  "$checker" --backend postgres --pgbouncer --clients 8 --duration 15 --faults --kills 1 \
    --database-restarts 1 --processing-steps reserve,charge,ship --processing-delay-ms 40 \
    --seed "$checker_seed"
fi

# A primary failover: the private cluster gets a synchronous streaming standby; mid-run the
# primary is killed (SIGKILL to all its processes) while the standby lags in what it shows,
# PgBouncer is pointed at the standby, still read-only, for 2 s, and then it is promoted. The
# server is never restarted. It fails on an acknowledged order lost or doubled, an order left
# unfinished, or one that took longer than a lease, a poll and its steps to end after the
# promotion; it prints the figures. No order fails for good here: a client's retry of one,
# at any time later, would count as that order's wait.
step "history checker (PostgreSQL through PgBouncer, a primary failover to its synchronous standby)"
if [[ -n $pgbouncer_skip ]]; then
  echo "skipped: $pgbouncer_skip"
else
  "$checker" --backend postgres --pgbouncer --failover --clients 8 --duration 20 \
    --processing-steps reserve,charge,ship --processing-delay-ms 40 --seed "$checker_seed"
fi

# Sustained load, short: bench-sustained (benches/bin/sustained.rs; scripts/bench.sh runs it
# for ten minutes) posts 300 orders/s for 60 s to the order-server binary the tests built (its
# debug build takes about 1,300/s with its workers on, on 2 cores), every tenth with an
# Idempotency-Key, and samples the database every 5 s; a missed bound fails the run: the bytes
# each order adds level off, dead rows in the orders table stay under 10% of its live ones, and
# the small tables stay small. On a private cluster with autovacuum waking every second: this
# machine's shared server runs with autovacuum off, and its default wake-up, a minute, is the
# whole run. The orders table starts with 50,000 COMPLETED orders, as a service's has a
# history: its dead rows are judged against a table's live ones, not a minute-old table's. Its
# growth is judged from 20 s on, once the updates have filled the free space its fillfactor
# left on the history's pages. 20 s adds about 2 MB to the orders table, which the heap's
# extension in batches and index page splits move by a tenth or more: the growth bound is 1.25
# here, 1.05 over the ten minutes.
step "sustained load (60 s on PostgreSQL: bytes per order, dead tuples, hot tables)"
sustained_shared_url=$TEST_DATABASE_URL
sustained_own_cluster=""
if [[ -z ${PG__PRIVATE_DIR:-} ]]; then
  pg_start_private || exit 1
  sustained_own_cluster=1
fi
sustained_admin_url=$TEST_DATABASE_URL
TEST_DATABASE_URL=$sustained_shared_url
sustained_db="order_sustained_$$"
sustained_url=$(pg_url_with_database "$sustained_admin_url" "$sustained_db")
sustained_pid=""
sustained_done() {
  if [[ -n $sustained_pid ]]; then
    kill -TERM "$sustained_pid" 2>/dev/null || true
    wait "$sustained_pid" 2>/dev/null || true
    sustained_pid=""
  fi
  if [[ -n ${sustained_db:-} ]]; then
    pg_psql "$sustained_admin_url" -q -c "DROP DATABASE IF EXISTS $sustained_db WITH (FORCE)" \
      -c 'ALTER SYSTEM RESET autovacuum_naptime' -c 'SELECT pg_reload_conf()' >/dev/null || true
    sustained_db=""
    if [[ -n $sustained_own_cluster ]]; then
      pg_stop_private
    fi
  fi
}
pg_at_exit sustained_done # also when a bound is missed
pg_psql "$sustained_admin_url" -q -c "CREATE DATABASE $sustained_db" \
  -c "ALTER SYSTEM SET autovacuum_naptime = '1s'" -c 'SELECT pg_reload_conf()' >/dev/null
sustained_port=18400
while (exec 3<>"/dev/tcp/127.0.0.1/$sustained_port") 2>/dev/null; do
  sustained_port=$((sustained_port + 1))
done
HOST=127.0.0.1 PORT=$sustained_port RUST_LOG=warn PROCESSING_DELAY_MS=0 IDEMPOTENCY_TTL_SECS=20 \
  DATABASE_URL=$sustained_url "${CARGO_TARGET_DIR:-target}/debug/order-server" &
sustained_pid=$!
sustained_deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null "http://127.0.0.1:$sustained_port/readyz" 2>/dev/null; do
  if ! kill -0 "$sustained_pid" 2>/dev/null || ((SECONDS > sustained_deadline)); then
    echo "error: order-server for the sustained load was not ready within 60 s" >&2
    exit 1
  fi
  sleep 0.2
done
pg_psql "$sustained_url" -q -c "
  INSERT INTO order_engine_orders
      (user_id, item_ids, total_amount, status, attempts, processing_start_time, processing_end_time)
  SELECT 'user-' || (g % 1000), ARRAY['item1', 'item2'], 59.99, 'COMPLETED', 1, now(), now()
    FROM generate_series(1, 50000) AS g" -c 'VACUUM ANALYZE order_engine_orders'
timeout 120 "${CARGO_TARGET_DIR:-target}/debug/bench-sustained" \
  --url "http://127.0.0.1:$sustained_port" --database-url "$sustained_url" --rate 300 \
  --duration-secs 60 --sample-secs 5 --settle-secs 10 --growth-from-secs 20 --max-growth-ratio 1.25
sustained_done

step "docs (cargo doc, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "example: embedded"
cargo run --quiet -p examples --example embedded

step "example: retries"
cargo run --quiet -p examples --example retries

step "example: checkout (steps, a worker killed mid-pipeline, compensations; checks its books)"
cargo run --quiet -p examples --example checkout

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

# The workspace's target directory, absolute: the steps below run cargo on manifests outside
# the workspace (cargo-semver-checks' placeholder crates, one for each crate and version), which
# would otherwise each build the dependency tree again in a target directory of their own.
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")

# order-core and order-server as crates.io would receive them, never published: each package
# holds only what its `include` lists, and is built from its tarball alone, with its default
# features, order-server against the packaged order-core (cargo packages both in one command).
# That proves the list is complete (the dashboard's files, compiled in with include_str!, the
# migrations) and that the dependencies' versions and features stand without the workspace.
# cargo unpacks the tarballs in target/package/ and builds them in the workspace's target
# directory (cargo 1.95 does so by itself; the variable keeps older ones from building the
# tree again in target/package/<crate>/target). Their features are each crate's defaults, not
# the workspace's union, so the first run builds part of the tree again (once: order-server's
# verification reuses order-core's).
step "packages (cargo package, each built from its tarball)"
CARGO_TARGET_DIR=$target_dir cargo package --locked -p order-core -p order-server

# Breaking changes come with the version they need (for 0.x, the minor one): cargo-semver-checks
# compares each publishable crate's public API, with every feature on (its default set: all
# but those named unstable, nightly, bench or no_std, which ours are not), with the last
# release's, at the commit scripts/semver-baseline names. It builds the rustdoc JSON of both
# in the workspace's target directory. Pinned: each version reads the rustdoc JSON of the
# toolchains of its time (0.51 reads format 57, rustc 1.95's); a newer toolchain may need a
# newer one. Installed when missing, built at opt-level 1 without LTO and with 16 codegen
# units: its own release profile (fat LTO, one unit) is the slowest way to build it, and what
# it does here (rustdoc JSON of two small crates, a few hundred queries) needs no more.
step "semver (cargo semver-checks against the last release)"
semver_checks_version=0.51.0
if [[ $(cargo semver-checks --version 2>/dev/null) != "cargo-semver-checks $semver_checks_version" ]]; then
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install cargo-semver-checks --locked --version "$semver_checks_version"
fi
semver_baseline=$(grep -v '^#' scripts/semver-baseline)
if ! git cat-file -e "$semver_baseline^{commit}" 2>/dev/null; then
  # A shallow clone: fetch the history it lacks (or just that commit) from where it came.
  echo "fetching $semver_baseline, the last release's commit, which this clone lacks"
  git fetch --quiet --unshallow 2>/dev/null || git fetch --quiet origin "$semver_baseline" || true
fi
if ! git cat-file -e "$semver_baseline^{commit}" 2>/dev/null; then
  echo "error: this clone lacks $semver_baseline, the last release's commit that" \
    "scripts/semver-baseline names, and could not fetch it: run git fetch --unshallow" >&2
  exit 1
fi
CARGO_TARGET_DIR=$target_dir cargo semver-checks --baseline-rev "$semver_baseline" \
  -p order-core -p order-server

# The in-memory build, as a service that keeps its orders in memory compiles it: without
# default features neither crate has a database driver in its tree, and both build and pass
# their tests. (Cargo unifies features: a driver that came in anyway would be compiled into
# every such service.)
step "without default features (in memory, no database driver)"
for crate in order-core order-server; do
  tree=$(cargo tree --locked -e normal --no-default-features -p "$crate" --prefix none --format '{p}')
  drivers=$(grep -oE '^(sqlx|sea-orm)([-_][a-z0-9_-]+)? v[^ ]+' <<<"$tree" | sort -u || true)
  if [[ -n $drivers ]]; then
    echo "error: $crate without default features depends on a database driver:" >&2
    echo "$drivers" >&2
    exit 1
  fi
done
cargo test --locked -p order-core --no-default-features
cargo test --locked -p order-server --no-default-features

# A service that depends on order-core and order-server as a user's does (tests/downstream,
# a workspace of its own, so that features unify over its tree alone): it installs its own
# Prometheus recorder first, nests router() under a prefix, reads an untagged enum with
# numbers (which serde_json's arbitrary_precision, turned on anywhere in its tree, breaks),
# runs an OrderProcessor with its own handler, and checks its answers over loopback. Built
# with the engine crates' default features and without them, on the workspace's Cargo.lock
# (copied, then checked: every version it resolved is the workspace's) and target directory.
step "downstream service (with and without default features)"
cp Cargo.lock tests/downstream/Cargo.lock
for features in "" "--no-default-features"; do
  # shellcheck disable=SC2086 # an empty $features is no argument
  (cd tests/downstream && CARGO_TARGET_DIR=$target_dir cargo run --quiet --offline $features)
done
python3 - <<'PY'
import tomllib
def packages(path):
    with open(path, "rb") as lock:
        return {(p["name"], p["version"]) for p in tomllib.load(lock)["package"]}
extra = packages("tests/downstream/Cargo.lock") - packages("Cargo.lock")
extra = {p for p in extra if p[0] != "order-downstream"}
if extra:
    raise SystemExit(f"error: the downstream service resolved versions the workspace does not lock: {sorted(extra)}")
PY

# The modules of each crate depend on one another without a cycle: scripts/module_cycles.py
# fails on one, naming its modules.
step "module cycles"
python3 scripts/module_cycles.py order-core/src order-server/src

# The criterion benches compile and link, in the test profile, on the artifacts the tests
# built (same flags): a release build would compile the whole dependency tree a second time.
# scripts/bench.sh builds and runs them in release.
step "benches build"
cargo test --quiet --workspace --all-features --benches --no-run

step "all checks passed in $((SECONDS - started)) s"
