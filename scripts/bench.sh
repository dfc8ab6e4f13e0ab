#!/usr/bin/env bash
# The reproducible performance benchmark: builds the release binaries, measures order-server
# over HTTP (in memory and on PostgreSQL), the engine's burn-down of a backlog, /metrics at a
# million orders, the server's memory, and the criterion engine bench, each figure beside a
# reference measured in the same run on the same machine. Prints a markdown table and writes it
# to BENCHMARKS.md, keeping the hand-written notes between `<!-- notes -->` and
# `<!-- /notes -->` in that file.
#
# Every figure is the median of BENCH_RUNS runs; each project run is interleaved with its
# reference run, so a noisy neighbour (a build, another benchmark) hits both alike. The ratio
# project/reference is what the targets are set on: absolute figures move with the machine,
# ratios much less.
#
# Needs: cargo, curl, wrk (installed with apt-get when missing, as root or with sudo), pgbench
# and psql, and a PostgreSQL server, found or started as scripts/test.sh does
# (scripts/postgres.sh: TEST_DATABASE_URL, else DATABASE_URL, else 127.0.0.1:5432, else a
# private cluster). A scratch database (BENCH_DATABASE) is created on it and dropped at exit.
#
# Environment (all optional):
#   BENCH_RUNS=3                  runs per figure; the table shows their median
#   BENCH_SECONDS=5               length of each wrk and `pgbench -T` run
#   BENCH_WARMUP_SECONDS=2        an uncounted wrk run against each server before its first
#                                 measured run (0: none)
#   BENCH_CONNECTIONS=32          wrk connections and pgbench clients
#   BENCH_GET_ORDERS=1000         orders created on each server for the GET runs to read
#   BENCH_BURNDOWN_ORDERS=100000  backlog size of each burn-down run
#   BENCH_STEPS_ORDERS=50000      backlog size of each run of the steps phase
#   BENCH_BULK_ORDERS=100000      FAILED orders the bulk phase retries, then cancels
#   BENCH_METRICS_ORDERS=1000000  orders stored for the large /metrics measurement
#   BENCH_METRICS_SECONDS=3       length of each /metrics wrk run
#   BENCH_CRITERION_SECONDS=5     criterion's --measurement-time (warm-up is 1 s)
#   BENCH_DATABASE=order_bench    the scratch database (dropped first if it exists)
#   BENCH_OUTPUT=BENCHMARKS.md    where the table is written
#   BENCH_PHASES=all              the phases to run, comma-separated: http (POST and GET on
#                                 both backends), metrics (/metrics and the dashboard's reads
#                                 at 1,000,000 orders), burndown, steps (three-step pipelines
#                                 against one-step ones), cost (PostgreSQL's work per
#                                 order), migration (from the first design, at
#                                 BENCH_METRICS_ORDERS orders), bulk (a bulk retry and a bulk
#                                 cancel of BENCH_BULK_ORDERS orders), sustained (half the
#                                 maximum POST rate for BENCH_SUSTAINED_SECONDS: bytes per
#                                 order, dead rows, hot tables), criterion. A run of some
#                                 phases only prints its table, unless BENCH_OUTPUT is set.
#   BENCH_SUSTAINED_SECONDS=600   length of the sustained load
#   BENCH_SUSTAINED_NAPTIME=1s    autovacuum_naptime of the sustained phase's private cluster
#   BENCH_FLOW_BATCH=32           orders per statement in the pgbench reference that makes
#                                 the design's writes (insert, claim and start, complete)
#   BENCH_OPERATOR_BACKLOG=50000  the least backlog an API-only server builds for the
#                                 operator's burn-down
#   BENCH_STRICT=1                exit 1 when any target is missed (default: report only)
# order-server's own settings (WORKERS, DB_MAX_CONNECTIONS, ...) pass through from the
# environment to the servers and the burn-down driver; the script sets only HOST, PORT,
# PROCESSING_DELAY_MS=0, RUST_LOG=warn and DATABASE_URL.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP_SECONDS:-2}
CONNS=${BENCH_CONNECTIONS:-32}
GET_ORDERS=${BENCH_GET_ORDERS:-1000}
BURN_ORDERS=${BENCH_BURNDOWN_ORDERS:-100000}
METRICS_ORDERS=${BENCH_METRICS_ORDERS:-1000000}
BULK_ORDERS=${BENCH_BULK_ORDERS:-100000}
METRICS_SMALL=1000
METRICS_SECS=${BENCH_METRICS_SECONDS:-3}
CRITERION_SECS=${BENCH_CRITERION_SECONDS:-5}
SUSTAINED_SECS=${BENCH_SUSTAINED_SECONDS:-600}
SUSTAINED_NAPTIME=${BENCH_SUSTAINED_NAPTIME:-1s}
BENCH_DB=${BENCH_DATABASE:-order_bench}
OUTPUT=${BENCH_OUTPUT:-BENCHMARKS.md}
PHASES=${BENCH_PHASES:-all}
if [[ $PHASES != all && -z ${BENCH_OUTPUT:-} ]]; then
  OUTPUT=""
fi

# PostgreSQL's work per order in the first design (a queue table beside the orders, PL/pgSQL
# counter triggers on both), measured once by the cost phase on that code, the reference of the
# cost row: row versions, WAL bytes and microseconds of the cluster's CPU per order (the median
# of 3 runs on 2026-12-03: 5.29 to 5.38 row versions, of which 1 insert and 2 updates of the
# order, 1 insert and 1 update of its queue row (then deleted), and the counters; 1,750 to
# 1,815 WAL bytes; 269 to 306 us).
FIRST_DESIGN_VERSIONS=5.36
FIRST_DESIGN_WAL=1757
FIRST_DESIGN_CPU_US=288.8
RSS_LIMIT_MB=64

started=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# wants PHASE: whether BENCH_PHASES asks for it.
wants() { [[ $PHASES == all || ,$PHASES, == *",$1,"* ]]; }
for phase in ${PHASES//,/ }; do
  [[ $phase =~ ^(all|http|metrics|burndown|steps|cost|migration|bulk|sustained|criterion)$ ]] ||
    die "BENCH_PHASES: unknown phase '$phase' (all, http, metrics, burndown, steps, cost, migration, bulk, sustained, criterion)"
done

for var in RUNS SECS WARMUP CONNS GET_ORDERS BURN_ORDERS METRICS_ORDERS METRICS_SECS CRITERION_SECS SUSTAINED_SECS; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, not '${!var}'"
done
((RUNS >= 1 && SECS >= 1 && CONNS >= 1 && GET_ORDERS >= 1 && BURN_ORDERS >= 1)) ||
  die "BENCH_RUNS, BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_GET_ORDERS and BENCH_BURNDOWN_ORDERS must be at least 1"
((METRICS_ORDERS > METRICS_SMALL)) || die "BENCH_METRICS_ORDERS must be more than $METRICS_SMALL"
[[ $BENCH_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "BENCH_DATABASE must be a plain lower-case identifier"
((SUSTAINED_SECS >= 60)) || die "BENCH_SUSTAINED_SECONDS must be at least 60 (its first minute is not judged)"
[[ $SUSTAINED_NAPTIME =~ ^[0-9]+(ms|s|min)?$ ]] || die "BENCH_SUSTAINED_NAPTIME must be a duration such as 1s or 1min"

# ---------------------------------------------------------------------------------------------
# Arithmetic and formatting (awk: no Python on the machine is assumed).

# The median of the numbers given as arguments.
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The sum of the integers given as arguments.
sum() {
  local total=0 n
  for n in "$@"; do total=$((total + n)); done
  printf '%s\n' "$total"
}

# calc EXPR: evaluates an awk arithmetic expression, e.g. calc "3 / 2" (in full: awk's print
# would round to 6 significant digits).
calc() { awk "BEGIN { printf \"%.6f\\n\", $1 }"; }

# holds EXPR: succeeds when an awk comparison holds, e.g. holds "1.7 >= 1.5".
holds() { awk "BEGIN { exit !($1) }"; }

# An integer with thousands separators: 12345.6 -> 12,346.
commas() {
  awk -v n="$1" 'BEGIN { n = sprintf("%.0f", n); sign = ""
    if (n ~ /^-/) { sign = "-"; n = substr(n, 2) }
    out = ""; while (length(n) > 3) { out = "," substr(n, length(n) - 2) out; n = substr(n, 1, length(n) - 3) }
    print sign n out }'
}

# A ratio to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'; }

# Milliseconds with a sensible number of decimals.
ms() { awk -v v="$1" 'BEGIN { if (v < 10) printf "%.2f ms\n", v; else printf "%.1f ms\n", v }'; }

# PASS when every awk condition given holds, else MISS.
verdict() {
  local cond
  for cond in "$@"; do
    if ! holds "$cond" 2>/dev/null; then
      printf 'MISS\n'
      return 0
    fi
  done
  printf 'PASS\n'
}

# A number from a flat JSON body: json_number BODY KEY (the first "KEY":<number>).
json_number() {
  printf '%s' "$1" | grep -o "\"$2\":[0-9.eE+-]*" | head -n 1 | cut -d: -f2
}

# ---------------------------------------------------------------------------------------------
# Tools.

ensure_wrk() {
  if command -v wrk >/dev/null 2>&1; then
    return 0
  fi
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die "wrk is not installed, and installing it needs root or password-less sudo: run 'sudo apt-get install wrk' (or put wrk on PATH) and rerun"
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || die "wrk is not installed and there is no apt-get to install it with: put wrk on PATH and rerun"
  step "installing wrk (apt-get install wrk)"
  # An old or empty package list is the usual reason the first try fails.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; then
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  fi
  command -v wrk >/dev/null 2>&1 || die "apt-get installed wrk, but it is not on PATH"
}

# pgbench from PATH, PG_BINDIR (set by ensure_postgres), or the newest /usr/lib/postgresql.
find_pgbench() {
  local path candidate
  if path=$(pg_tool pgbench); then
    printf '%s\n' "$path"
    return 0
  fi
  path=""
  for candidate in /usr/lib/postgresql/*/bin/pgbench; do
    if [[ -x $candidate ]]; then
      path=$candidate # the glob sorts 9 after 17, but any version drives a simple script
    fi
  done
  [[ -n $path ]] || return 1
  printf '%s\n' "$path"
}

# ---------------------------------------------------------------------------------------------
# Servers: started in the background, each with its pid remembered so that the exit hook stops
# it whatever happens.

SERVER_PIDS=()
SERVER_PID=""
SERVER_PORT=""
NEXT_PORT=18300

# A port nothing listens on, from 18300 up (below Linux's ephemeral range, where the other
# programs on the machine get theirs).
free_port() {
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do
    NEXT_PORT=$((NEXT_PORT + 1))
  done
  SERVER_PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}

# start_server NAME [VAR=value ...] PROGRAM [ARGS]: runs it with HOST, PORT and the given
# environment, output to $WORK/NAME.log, and waits for GET /healthz to answer 200. Sets
# SERVER_PID and SERVER_PORT. Not to be called in a subshell: the server must be our child.
start_server() {
  local name=$1 log deadline
  shift
  log="$WORK/$name.log"
  free_port
  env HOST=127.0.0.1 PORT="$SERVER_PORT" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  SERVER_PIDS+=("$SERVER_PID")
  # PostgreSQL servers connect and migrate first; 60 s covers DB_STARTUP_TIMEOUT_SECS' default.
  deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$SERVER_PORT/healthz" 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 30 "$log" >&2
      die "$name exited before it answered /healthz (log above, $log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$log" >&2
      die "$name did not answer /healthz on port $SERVER_PORT within 60 s (log above)"
    fi
    sleep 0.1
  done
  say "$name listening on 127.0.0.1:$SERVER_PORT (pid $SERVER_PID)"
}

# launch_until_ready NAME SECONDS [VAR=value ...]: starts order-server on PostgreSQL (the bench
# database) with HOST, PORT, RUST_LOG=warn and the given environment, output to
# $WORK/NAME.log, and returns at its first 200 on /readyz, failing after SECONDS. Sets
# SERVER_PID and SERVER_PORT. Not to be called in a subshell: the server must be our child.
launch_until_ready() {
  local name=$1 limit=$2 began
  shift 2
  free_port
  env HOST=127.0.0.1 PORT="$SERVER_PORT" RUST_LOG=warn DATABASE_URL="$BENCH_URL" "$@" \
    "$SERVER_BIN" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  SERVER_PIDS+=("$SERVER_PID")
  began=$SECONDS
  until curl -fsS -o /dev/null "http://127.0.0.1:$SERVER_PORT/readyz" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited before it was ready ($WORK/$name.log)"
    ((SECONDS - began < limit)) || die "$name was not ready within $limit s"
    sleep 0.01
  done
}

# stop_server PID: SIGTERM (the server drains and exits), SIGKILL if it has not after 40 s.
stop_server() {
  local pid=$1 deadline i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 40))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "pid $pid did not stop within 40 s of SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${!SERVER_PIDS[@]}"; do
    if [[ ${SERVER_PIDS[i]} == "$pid" ]]; then
      unset 'SERVER_PIDS[i]'
    fi
  done
}

stop_all_servers() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    stop_server "$pid"
  done
}

remove_workdir() {
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    rm -rf "$WORK"
  fi
}

# Peak resident memory of a process (VmHWM), in MB.
peak_rss_mb() {
  awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"
}

# The server's /metrics body.
metrics_of() { curl -fsS "http://127.0.0.1:$1/metrics"; }

# Orders not yet finished (PENDING + PROCESSING) on the server at PORT.
unfinished() {
  local body
  body=$(metrics_of "$1")
  printf '%s\n' $(($(json_number "$body" pending) + $(json_number "$body" processing)))
}

# wait_drained PORT: waits until the server's workers have finished every order posted, so
# that the next measurement does not compete with the last one's backlog.
wait_drained() {
  local port=$1 deadline=$((SECONDS + 300)) left
  while :; do
    left=$(unfinished "$port")
    if ((left == 0)); then
      return 0
    fi
    if ((SECONDS > deadline)); then
      warn "the server on port $port still has $left unfinished orders after 300 s; going on"
      return 0
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# Load generators.

# wrk_run LABEL URL [LUA_SCRIPT] [SECONDS] [CONNECTIONS]: one wrk run (one thread: the server
# gets the other core); prints "requests_per_sec p50_ms p99_ms errors", errors being non-2xx/3xx
# responses plus socket errors.
wrk_run() {
  local label=$1 url=$2 script=${3:-} secs=${4:-$SECS} conns=${5:-$CONNS} out args=()
  out="$WORK/wrk-$label.txt"
  args=(-t1 "-c$conns" "-d${secs}s" --latency)
  if [[ -n $script ]]; then
    args+=(-s "$script")
  fi
  if ! wrk "${args[@]}" "$url" >"$out" 2>&1; then
    cat "$out" >&2
    die "wrk failed against $url (output above)"
  fi
  awk '
    function to_ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000
      if (v ~ /h$/) return v * 3600000
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = to_ms($2) }
    $1 == "99%" { p99 = to_ms($2) }
    /Non-2xx or 3xx responses:/ { errors += $NF }
    /Socket errors:/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    END {
      if (rps == "" || p50 == "" || p99 == "") exit 1
      printf "%s %s %s %d\n", rps, p50, p99, errors
    }' "$out" || {
    cat "$out" >&2
    die "could not read wrk's output for $url (above)"
  }
}

# pgbench_run LABEL SCRIPT ARGS...: one pgbench run on the bench database; prints "tps failed".
pgbench_run() {
  local label=$1 script=$2 out
  shift 2
  out="$WORK/pgbench-$label.txt"
  if ! "$PGBENCH" -n -M prepared -f "$script" "-c${PGBENCH_CLIENTS:-$CONNS}" -j2 "$@" "$BENCH_URL" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    die "pgbench failed ($script; output above)"
  fi
  awk '/^tps = / { tps = $3 } /^number of failed transactions:/ { failed = $5 }
    END { if (tps == "") exit 1; printf "%s %d\n", tps, failed }' "$out" || {
    cat "$out" >&2
    die "could not read pgbench's output (above)"
  }
}

# seed_orders PORT COUNT IDS_FILE: creates COUNT orders with POST /orders over one kept-alive
# connection and writes their ids (from the Location headers) to IDS_FILE.
seed_orders() {
  local port=$1 count=$2 ids=$3 config="$WORK/seed.curl" i
  {
    printf 'header = "content-type: application/json"\n'
    printf 'data = "%s"\n' "${ORDER_JSON//\"/\\\"}"
    printf 'write-out = "%%{http_code} %%header{location}\\n"\n'
    # Each url takes the output that follows it; the other options apply to them all.
    for ((i = 0; i < count; i++)); do
      printf 'url = "http://127.0.0.1:%s/orders"\noutput = "/dev/null"\n' "$port"
    done
  } >"$config"
  curl -sS --config "$config" | awk '$1 == 201 { sub(".*/", "", $2); print $2 }' >"$ids"
  local made
  made=$(wc -l <"$ids")
  ((made == count)) || die "only $made of $count POST /orders to port $port answered 201"
}

# get_script NAME IDS_FILE: a wrk script that GETs the orders in IDS_FILE in a random order.
get_script() {
  local path="$WORK/get-$1.lua"
  {
    printf 'local ids = {%s}\n' "$(paste -sd, "$2")"
    cat <<'LUA'
local requests = {}
-- Requests built once, in a shuffled order, so that wrk spends no time per request on them.
init = function(args)
  math.randomseed(os.time())
  for i = #ids, 2, -1 do
    local j = math.random(i)
    ids[i], ids[j] = ids[j], ids[i]
  end
  for i, id in ipairs(ids) do
    requests[i] = wrk.format("GET", "/orders/" .. id)
  end
end
local n = 0
request = function()
  n = n % #requests + 1
  return requests[n]
end
LUA
  } >"$path"
  printf '%s\n' "$path"
}

# ---------------------------------------------------------------------------------------------
# The table.

ROWS=()
MISSES=0

# row FIGURE PROJECT REFERENCE RATIO TARGET RESULT
row() {
  local line
  line=$(printf '| %s | %s | %s | %s | %s | %s |' "$@")
  ROWS+=("$line")
  if [[ $6 == MISS* ]]; then
    MISSES=$((MISSES + 1))
  fi
}

# A result with the errors of the runs behind it: any error makes a MISS.
with_errors() {
  local result=$1 errors=$2
  if ((errors > 0)); then
    printf 'MISS (%s errors)\n' "$(commas "$errors")"
  else
    printf '%s\n' "$result"
  fi
}

# " ⚠ N non-2xx" after a figure whose runs had errors.
flag_errors() {
  if (($1 > 0)); then
    printf ' ⚠ %s errors' "$(commas "$1")"
  fi
}

write_report() {
  local notes="" cores cpu date tmp about
  if [[ -f $OUTPUT ]]; then
    notes=$(awk '/<!-- notes -->/ { keep = 1 } keep { print } /<!-- \/notes -->/ { keep = 0 }' "$OUTPUT")
  fi
  if [[ -z $notes ]]; then
    notes=$'<!-- notes -->\n_No notes yet. Profiling notes written between these markers survive `scripts/bench.sh`, which regenerates everything above them._\n<!-- /notes -->'
  fi
  cores=$(nproc)
  cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
  date=$(date -u +%F)
  tmp="$OUTPUT.tmp.$$"
  # How the figures were made, with this run's settings filled in.
  about=$(
    cat <<'TEXT'
Generated by `scripts/bench.sh` in @TOTAL@ s: do not edit above "Notes". Each figure is the
median of @RUNS@ runs, each run interleaved with its reference run; ratio = project / reference.
HTTP: `wrk -t1 -c@CONNS@ -d@SECS@s --latency` on loopback against order-server (release build)
with `PROCESSING_DELAY_MS=0` and its defaults otherwise (its workers on: the orders posted are
also processed, and the script waits for them to finish between runs), and against `bench-echo`,
a bare axum server taking and giving the same JSON. Burn-down: `bench-burndown` submits
@BURN@ orders to the server's engine, then starts it and times it to the last COMPLETED.
Criterion: `benches/processor.rs`, the median of its samples.
TEXT
  )
  about=${about//@TOTAL@/$((SECONDS - started))}
  about=${about//@RUNS@/$RUNS}
  about=${about//@CONNS@/$CONNS}
  about=${about//@SECS@/$SECS}
  about=${about//@BURN@/$(commas "$BURN_ORDERS")}
  {
    printf '# Benchmarks\n\n'
    printf 'Machine: %s cores, %s, PostgreSQL %s, %s.\n\n' "$cores" "${cpu:-unknown CPU}" "$PG_VERSION" "$date"
    printf '| figure | project | reference (same run) | ratio | target | result |\n'
    printf '|---|---|---|---|---|---|\n'
    printf '%s\n' "${ROWS[@]}"
    printf '\n%s\n' "$about"
    printf '\n## Notes\n\n%s\n' "$notes"
  } >"$tmp"
  mv "$tmp" "$OUTPUT"
}

# ---------------------------------------------------------------------------------------------
# Setup.

# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh

WORK=$(mktemp -d /tmp/order-bench.XXXXXX)
pg_at_exit remove_workdir

step "tools"
ensure_wrk
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
say "$(wrk --version 2>&1 | head -n 1)"

step "build (cargo build --release -p order-server -p benches --bins --bench processor)"
build_started=$SECONDS
# One build for everything: criterion's dev-dependencies switch on features of crates that the
# server shares (serde, ...), and a second `cargo bench` build would compile them all again.
# The server then has those extra features too, which change none of its code paths. (Not
# `--benches`: that also builds every binary as a bench harness, under the same name.)
cargo build --release -p order-server -p benches --bins --bench processor \
  --message-format=json-render-diagnostics >"$WORK/build.json"
say "built in $((SECONDS - build_started)) s"
# Every phase runs copies of what was just built: a `cargo build` elsewhere in the work tree
# during the run (target/ may be shared) cannot swap a binary between two phases, and criterion
# is not rebuilt from sources that changed meanwhile.
mkdir "$WORK/bin"
# copy_executable CARGO_JSON TARGET: copies the executable cargo reported for TARGET to
# $WORK/bin/TARGET and prints its new path.
copy_executable() {
  local path
  path=$(grep -F "\"name\":\"$2\"" "$1" | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
  [[ -n $path && -x $path ]] || die "cargo reported no executable for $2"
  cp "$path" "$WORK/bin/$2"
  printf '%s\n' "$WORK/bin/$2"
}
SERVER_BIN=$(copy_executable "$WORK/build.json" order-server)
ECHO_BIN=$(copy_executable "$WORK/build.json" bench-echo)
BURNDOWN_BIN=$(copy_executable "$WORK/build.json" bench-burndown)
SUSTAINED_BIN=$(copy_executable "$WORK/build.json" bench-sustained)
CRITERION_BIN=$(copy_executable "$WORK/build.json" processor)

step "PostgreSQL"
ensure_postgres
PGBENCH=$(find_pgbench) || die "pgbench not found on PATH, in PG_BINDIR or /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql-client)"
BENCH_URL=$(pg_url_with_database "$TEST_DATABASE_URL" "$BENCH_DB")

# psql on the server's admin database, then on the bench database; without the NOTICEs of
# `IF EXISTS` statements.
admin_sql() { pg_psql "$TEST_DATABASE_URL" -q -c 'SET client_min_messages TO warning' "$@"; }
bench_sql() { pg_psql "$BENCH_URL" -q -c 'SET client_min_messages TO warning' "$@"; }
drop_bench_db() {
  admin_sql -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" ||
    warn "could not drop the database $BENCH_DB"
}
# A fresh database: the server migrates it at start.
recreate_bench_db() {
  admin_sql -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $BENCH_DB" ||
    die "could not create the database $BENCH_DB"
}
# Hooks run last first: the servers stop before their database is dropped.
pg_at_exit drop_bench_db
pg_at_exit stop_all_servers
recreate_bench_db
PG_VERSION=$(pg_psql "$BENCH_URL" -Atqc 'SHOW server_version' | awk '{ print $1 }')
say "database $(pg_redact_url "$BENCH_URL"), PostgreSQL $PG_VERSION, pgbench $PGBENCH"

ORDER_JSON='{"userId":"user-1","itemIds":["item1","item2"],"totalAmount":59.99}'
POST_LUA="$WORK/post.lua"
cat >"$POST_LUA" <<LUA
wrk.method = "POST"
wrk.body = '$ORDER_JSON'
wrk.headers["Content-Type"] = "application/json"
LUA

# The pgbench references run on copies of the orders table (LIKE ... INCLUDING ALL: the same
# columns, defaults, identity, checks and indexes, without the engine's triggers).
INSERT_SQL="$WORK/insert.sql"
cat >"$INSERT_SQL" <<'SQL'
INSERT INTO bench_insert (user_id, item_ids, total_amount, status)
  VALUES ('user-1', ARRAY['item1', 'item2'], 59.99, 'PENDING') RETURNING id;
SQL
BURN_SQL="$WORK/burn.sql"
cat >"$BURN_SQL" <<'SQL'
BEGIN;
SELECT id FROM bench_burn WHERE status = 'PENDING' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
UPDATE bench_burn SET status = 'COMPLETED', processing_end_time = now() WHERE id = :id;
END;
SQL

# keyed_script RUN: a wrk script posting the same order under a new Idempotency-Key each
# request, unique to this run, so that every request creates an order.
keyed_script() {
  local file="$WORK/post-keyed-$1.lua"
  cat >"$file" <<LUA
wrk.method = "POST"
wrk.body = '$ORDER_JSON'
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "bench-$1-$(date +%s%N)-" .. counter
  return wrk.format()
end
LUA
  printf '%s\n' "$file"
}

# What PostgreSQL itself can do with the writes the design makes per order, batched as the
# server batches them: each pgbench client stores FLOW_BATCH orders in one statement, claims
# and starts FLOW_BATCH due ones in a second, and completes those in a third, each its own
# transaction as the server's are, on a copy of the orders table (its indexes, not its
# triggers). FLOW_CLIENTS clients: the server has one statement of each kind in flight.
FLOW_BATCH=${BENCH_FLOW_BATCH:-32}
FLOW_CLIENTS=3
FLOW_SQL="$WORK/flow.sql"
cat >"$FLOW_SQL" <<SQL
INSERT INTO bench_flow (user_id, item_ids, total_amount, status, attempts)
  SELECT 'user-1', ARRAY['item1', 'item2'], 59.99, 'PENDING', 0 FROM generate_series(1, $FLOW_BATCH);
WITH due AS (SELECT id FROM bench_flow WHERE status IN ('PENDING', 'PROCESSING') AND available_at <= now() ORDER BY available_at, id LIMIT $FLOW_BATCH FOR UPDATE SKIP LOCKED), started AS (UPDATE bench_flow o SET status = 'PROCESSING', claim_token = gen_random_uuid(), available_at = now() + interval '10 seconds', deliveries = o.deliveries + 1, attempts = o.attempts + 1, processing_start_time = coalesce(o.processing_start_time, now()), updated_at = now() FROM due WHERE o.id = due.id RETURNING o.id) SELECT coalesce(array_agg(id), '{}') AS ids FROM started \gset
UPDATE bench_flow SET status = 'COMPLETED', processing_end_time = now(), available_at = NULL, updated_at = now() WHERE id = ANY(:ids::bigint[]) AND status = 'PROCESSING';
SQL

if wants http; then
# ---------------------------------------------------------------------------------------------
step "servers: order-server on PostgreSQL, order-server in memory, bench-echo"
start_server order-server-pg RUST_LOG=warn PROCESSING_DELAY_MS=0 DATABASE_URL="$BENCH_URL" "$SERVER_BIN"
PG_PID=$SERVER_PID PG_PORT=$SERVER_PORT
# ensure_postgres unset DATABASE_URL, so this one keeps its orders in memory.
start_server order-server-memory RUST_LOG=warn PROCESSING_DELAY_MS=0 "$SERVER_BIN"
MEM_PID=$SERVER_PID MEM_PORT=$SERVER_PORT
start_server bench-echo "$ECHO_BIN"
ECHO_PORT=$SERVER_PORT ECHO_PID=$SERVER_PID
# After the server's migration, so the copy has the engine's current schema.
bench_sql -c 'CREATE TABLE bench_insert (LIKE order_engine_orders INCLUDING ALL)' \
  -c 'CREATE TABLE bench_flow (LIKE order_engine_orders INCLUDING ALL)'

# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
if ((WARMUP > 0)); then
  step "POST /orders on PostgreSQL, warm-up (${WARMUP} s, not counted)"
  wrk_run pg-post-warmup "http://127.0.0.1:$PG_PORT/orders" "$POST_LUA" "$WARMUP" >/dev/null
  wait_drained "$PG_PORT"
fi
pg_rps=() pg_p50=() pg_p99=() pg_errors=() pg_backlog=() ins_tps=() ins_failed=()
key_rps=() key_p99=() key_errors=() flow_rate=() flow_failed=()
for ((run = 1; run <= RUNS; run++)); do
  step "POST /orders on PostgreSQL, run $run/$RUNS: pgbench INSERT and flow references, then order-server plain and keyed"
  result=$(pgbench_run "insert-$run" "$INSERT_SQL" "-T$SECS")
  read -r tps failed <<<"$result"
  ins_tps+=("$tps") ins_failed+=("$failed")
  result=$(PGBENCH_CLIENTS=$FLOW_CLIENTS pgbench_run "flow-$run" "$FLOW_SQL" "-T$SECS")
  read -r flow_tps failed <<<"$result"
  flow_rate+=("$(calc "$flow_tps * $FLOW_BATCH")") flow_failed+=("$failed")
  bench_sql -c 'TRUNCATE bench_flow'
  result=$(wrk_run "pg-post-$run" "http://127.0.0.1:$PG_PORT/orders" "$POST_LUA")
  read -r rps p50 p99 errors <<<"$result"
  backlog=$(unfinished "$PG_PORT")
  pg_rps+=("$rps") pg_p50+=("$p50") pg_p99+=("$p99") pg_errors+=("$errors") pg_backlog+=("$backlog")
  say "pgbench INSERT $(commas "$tps")/s, flow $(commas "${flow_rate[-1]}") orders/s; order-server $(commas "$rps")/s, p50 $(ms "$p50"), p99 $(ms "$p99"), $errors errors, $backlog unfinished when wrk stopped"
  wait_drained "$PG_PORT"
  result=$(wrk_run "pg-post-keyed-$run" "http://127.0.0.1:$PG_PORT/orders" "$(keyed_script "$run")")
  read -r rps p50 p99 errors <<<"$result"
  key_rps+=("$rps") key_p99+=("$p99") key_errors+=("$errors")
  say "order-server keyed $(commas "$rps")/s, p99 $(ms "$p99"), $errors errors"
  wait_drained "$PG_PORT"
done
PG_POST_RSS=$(peak_rss_mb "$PG_PID")
m_rps=$(median "${pg_rps[@]}") m_p50=$(median "${pg_p50[@]}") m_p99=$(median "${pg_p99[@]}")
m_ins=$(median "${ins_tps[@]}") errors=$(sum "${pg_errors[@]}") ref_errors=$(sum "${ins_failed[@]}")
PG_POST_RPS=$m_rps # the sustained phase's maximum
row "POST /orders per second, PostgreSQL (workers on)" \
  "$(commas "$m_rps")/s, p50 $(ms "$m_p50"), p99 $(ms "$m_p99")$(flag_errors "$errors"); $(commas "$(median "${pg_backlog[@]}")") unfinished when wrk stopped" \
  "pgbench -c$CONNS -j2 single-row INSERT ... RETURNING id: $(commas "$m_ins")/s$(flag_errors "$ref_errors")" \
  "$(ratio "$m_rps" "$m_ins")" "ratio ≥ 1.5; p99 < 20 ms" \
  "$(with_errors "$(verdict "$m_rps / $m_ins >= 1.5" "$m_p99 < 20")" "$((errors + ref_errors))")"
m_key=$(median "${key_rps[@]}") key_err=$(sum "${key_errors[@]}")
row "POST /orders with a new Idempotency-Key each, PostgreSQL (workers on)" \
  "$(commas "$m_key")/s, p99 $(ms "$(median "${key_p99[@]}")")$(flag_errors "$key_err")" \
  "the plain POST above, same runs: $(commas "$m_rps")/s" \
  "$(ratio "$m_key" "$m_rps")" "ratio ≥ 0.9" \
  "$(with_errors "$(verdict "$m_key / $m_rps >= 0.9")" "$((key_err + errors))")"
m_flow=$(median "${flow_rate[@]}") flow_err=$(sum "${flow_failed[@]}")
row "POST /orders on PostgreSQL (workers on) against PostgreSQL doing the design's writes alone" \
  "$(commas "$m_rps") orders/s taken in and processed" \
  "pgbench -c$FLOW_CLIENTS, each round three statements: INSERT $FLOW_BATCH orders, claim and start $FLOW_BATCH, complete them: $(commas "$m_flow") orders/s$(flag_errors "$flow_err")" \
  "$(ratio "$m_rps" "$m_flow")" "— (how close to the database's own ceiling)" "—"
say "($((SECONDS - phase_started)) s)"

# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
if ((WARMUP > 0)); then
  step "POST /orders in memory, warm-up (${WARMUP} s each, not counted)"
  wrk_run echo-post-warmup "http://127.0.0.1:$ECHO_PORT/orders" "$POST_LUA" "$WARMUP" >/dev/null
  wrk_run mem-post-warmup "http://127.0.0.1:$MEM_PORT/orders" "$POST_LUA" "$WARMUP" >/dev/null
fi
mem_rps=() mem_p50=() mem_p99=() mem_errors=() echo_rps=() echo_p99=() echo_errors=()
for ((run = 1; run <= RUNS; run++)); do
  step "POST /orders in memory, run $run/$RUNS: bench-echo, then order-server"
  result=$(wrk_run "echo-post-$run" "http://127.0.0.1:$ECHO_PORT/orders" "$POST_LUA")
  read -r rps p50 p99 errors <<<"$result"
  echo_rps+=("$rps") echo_p99+=("$p99") echo_errors+=("$errors")
  say "bench-echo $(commas "$rps")/s, p99 $(ms "$p99"), $errors errors"
  result=$(wrk_run "mem-post-$run" "http://127.0.0.1:$MEM_PORT/orders" "$POST_LUA")
  read -r rps p50 p99 errors <<<"$result"
  mem_rps+=("$rps") mem_p50+=("$p50") mem_p99+=("$p99") mem_errors+=("$errors")
  say "order-server $(commas "$rps")/s, p50 $(ms "$p50"), p99 $(ms "$p99"), $errors errors"
done
wait_drained "$MEM_PORT"
MEM_RSS=$(peak_rss_mb "$MEM_PID")
MEM_HELD=$(json_number "$(metrics_of "$MEM_PORT")" totalOrders)
m_rps=$(median "${mem_rps[@]}") m_echo=$(median "${echo_rps[@]}")
errors=$(sum "${mem_errors[@]}") ref_errors=$(sum "${echo_errors[@]}")
row "POST /orders per second, in memory (workers on)" \
  "$(commas "$m_rps")/s, p50 $(ms "$(median "${mem_p50[@]}")"), p99 $(ms "$(median "${mem_p99[@]}")")$(flag_errors "$errors")" \
  "bench-echo POST: $(commas "$m_echo")/s, p99 $(ms "$(median "${echo_p99[@]}")")$(flag_errors "$ref_errors")" \
  "$(ratio "$m_rps" "$m_echo")" "ratio ≥ 0.60" \
  "$(with_errors "$(verdict "$m_rps / $m_echo >= 0.60")" "$((errors + ref_errors))")"
say "($((SECONDS - phase_started)) s)"

# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
step "GET /orders/{id}: creating $GET_ORDERS orders on each order-server to read"
seed_orders "$PG_PORT" "$GET_ORDERS" "$WORK/ids-pg"
seed_orders "$MEM_PORT" "$GET_ORDERS" "$WORK/ids-memory"
seq 1 "$GET_ORDERS" >"$WORK/ids-echo"
GET_PG_LUA=$(get_script pg "$WORK/ids-pg")
GET_MEM_LUA=$(get_script memory "$WORK/ids-memory")
GET_ECHO_LUA=$(get_script echo "$WORK/ids-echo")
wait_drained "$PG_PORT"
wait_drained "$MEM_PORT"
if ((WARMUP > 0)); then
  step "GET /orders/{id}, warm-up (${WARMUP} s each, not counted)"
  wrk_run echo-get-warmup "http://127.0.0.1:$ECHO_PORT" "$GET_ECHO_LUA" "$WARMUP" >/dev/null
  wrk_run pg-get-warmup "http://127.0.0.1:$PG_PORT" "$GET_PG_LUA" "$WARMUP" >/dev/null
  wrk_run mem-get-warmup "http://127.0.0.1:$MEM_PORT" "$GET_MEM_LUA" "$WARMUP" >/dev/null
fi
eg_rps=() eg_p99=() eg_errors=() pg_rps=() pg_p50=() pg_p99=() pg_errors=() mem_rps=() mem_p50=() mem_p99=() mem_errors=()
for ((run = 1; run <= RUNS; run++)); do
  step "GET /orders/{id}, run $run/$RUNS: bench-echo, order-server on PostgreSQL, order-server in memory"
  result=$(wrk_run "echo-get-$run" "http://127.0.0.1:$ECHO_PORT" "$GET_ECHO_LUA")
  read -r rps p50 p99 errors <<<"$result"
  eg_rps+=("$rps") eg_p99+=("$p99") eg_errors+=("$errors")
  say "bench-echo $(commas "$rps")/s, p99 $(ms "$p99"), $errors errors"
  result=$(wrk_run "pg-get-$run" "http://127.0.0.1:$PG_PORT" "$GET_PG_LUA")
  read -r rps p50 p99 errors <<<"$result"
  pg_rps+=("$rps") pg_p50+=("$p50") pg_p99+=("$p99") pg_errors+=("$errors")
  say "order-server on PostgreSQL $(commas "$rps")/s, p50 $(ms "$p50"), p99 $(ms "$p99"), $errors errors"
  result=$(wrk_run "mem-get-$run" "http://127.0.0.1:$MEM_PORT" "$GET_MEM_LUA")
  read -r rps p50 p99 errors <<<"$result"
  mem_rps+=("$rps") mem_p50+=("$p50") mem_p99+=("$p99") mem_errors+=("$errors")
  say "order-server in memory $(commas "$rps")/s, p50 $(ms "$p50"), p99 $(ms "$p99"), $errors errors"
done
m_echo=$(median "${eg_rps[@]}") ref_errors=$(sum "${eg_errors[@]}")
echo_cell="bench-echo GET: $(commas "$m_echo")/s, p99 $(ms "$(median "${eg_p99[@]}")")$(flag_errors "$ref_errors")"
m_rps=$(median "${pg_rps[@]}") errors=$(sum "${pg_errors[@]}")
row "GET /orders/{id} per second, PostgreSQL" \
  "$(commas "$m_rps")/s, p50 $(ms "$(median "${pg_p50[@]}")"), p99 $(ms "$(median "${pg_p99[@]}")")$(flag_errors "$errors")" \
  "$echo_cell" "$(ratio "$m_rps" "$m_echo")" "ratio ≥ 0.50" \
  "$(with_errors "$(verdict "$m_rps / $m_echo >= 0.50")" "$((errors + ref_errors))")"
m_rps=$(median "${mem_rps[@]}") errors=$(sum "${mem_errors[@]}")
row "GET /orders/{id} per second, in memory" \
  "$(commas "$m_rps")/s, p50 $(ms "$(median "${mem_p50[@]}")"), p99 $(ms "$(median "${mem_p99[@]}")")$(flag_errors "$errors")" \
  "$echo_cell" "$(ratio "$m_rps" "$m_echo")" "ratio ≥ 0.70" \
  "$(with_errors "$(verdict "$m_rps / $m_echo >= 0.70")" "$((errors + ref_errors))")"
say "($((SECONDS - phase_started)) s)"

step "stopping the servers"
stop_server "$ECHO_PID"
stop_server "$MEM_PID"
stop_server "$PG_PID"

fi

if wants metrics; then
# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
step "/metrics on PostgreSQL: a fresh database and server, $(commas "$METRICS_SMALL") orders stored"
recreate_bench_db
start_server order-server-pg-metrics RUST_LOG=warn PROCESSING_DELAY_MS=0 DATABASE_URL="$BENCH_URL" "$SERVER_BIN"
PG_PID=$SERVER_PID PG_PORT=$SERVER_PORT
# COMPLETED rows, as the engine would have left them, so that the workers leave them alone;
# the engine's triggers count them as they would any insert.
insert_completed() {
  bench_sql -c "
    INSERT INTO order_engine_orders
        (user_id, item_ids, total_amount, status, attempts, processing_start_time, processing_end_time)
    SELECT 'user-' || g, ARRAY['item1', 'item2'], 59.99, 'COMPLETED', 1,
           now() - interval '2 seconds', now() - interval '1 second'
      FROM generate_series(1, $1) AS g"
}
# measure_metrics LABEL EXPECTED_TOTAL [PATH]: median of the p50 of BENCH_RUNS wrk runs on PATH
# (default /metrics) with one connection, after checking that /metrics counts the orders stored.
measure_metrics() {
  local label=$1 expected=$2 path=${3:-/metrics} total deadline p50s=() errors=0 run result rps p50 p99 e
  # The orders were inserted behind the server's back: allow its counters a few seconds to
  # show them (within 1%), in case they are cached.
  deadline=$((SECONDS + 15))
  while :; do
    total=$(json_number "$(metrics_of "$PG_PORT")" totalOrders)
    if holds "$total >= $expected * 0.99 && $total <= $expected * 1.01"; then
      break
    fi
    ((SECONDS < deadline)) ||
      die "/metrics says totalOrders=$total, expected $expected: the figure would not be measured at the size it claims"
    sleep 0.5
  done
  wrk_run "metrics-$label-warmup" "http://127.0.0.1:$PG_PORT$path" "" 1 1 >/dev/null
  for ((run = 1; run <= RUNS; run++)); do
    result=$(wrk_run "metrics-$label-$run" "http://127.0.0.1:$PG_PORT$path" "" "$METRICS_SECS" 1)
    read -r rps p50 p99 e <<<"$result"
    p50s+=("$p50")
    errors=$((errors + e))
    printf '    %s with %s orders, run %s/%s: p50 %s, %s/s, %s errors\n' \
      "$path" "$(commas "$expected")" "$run" "$RUNS" "$(ms "$p50")" "$(commas "$rps")" "$e" >&2
  done
  printf '%s %s\n' "$(median "${p50s[@]}")" "$errors"
}
# What the dashboard reads each second it is open, besides the stream of counts (which is
# sampled from the same aggregates as /metrics, once a second whatever the number of viewers):
# the newest page of orders, and the newest page of one status.
DASHBOARD_PAGE="/orders?limit=20"
DASHBOARD_FILTERED="/orders?status=COMPLETED&limit=20"
insert_completed "$METRICS_SMALL"
result=$(measure_metrics small "$METRICS_SMALL")
read -r small_p50 small_errors <<<"$result"
read -r small_page_p50 small_page_errors <<<"$(measure_metrics page-small "$METRICS_SMALL" "$DASHBOARD_PAGE")"
read -r small_filtered_p50 small_filtered_errors <<<"$(measure_metrics filtered-small "$METRICS_SMALL" "$DASHBOARD_FILTERED")"
step "/metrics on PostgreSQL: inserting $(commas "$((METRICS_ORDERS - METRICS_SMALL))") more orders"
insert_started=$SECONDS
insert_completed "$((METRICS_ORDERS - METRICS_SMALL))"
say "inserted in $((SECONDS - insert_started)) s"
step "/metrics on PostgreSQL: $(commas "$METRICS_ORDERS") orders stored"
result=$(measure_metrics large "$METRICS_ORDERS")
read -r large_p50 large_errors <<<"$result"
read -r large_page_p50 large_page_errors <<<"$(measure_metrics page-large "$METRICS_ORDERS" "$DASHBOARD_PAGE")"
read -r large_filtered_p50 large_filtered_errors <<<"$(measure_metrics filtered-large "$METRICS_ORDERS" "$DASHBOARD_FILTERED")"
PG_LARGE_RSS=$(peak_rss_mb "$PG_PID")
errors=$((small_errors + large_errors))
row "GET /metrics median latency, $(commas "$METRICS_ORDERS") orders stored (PostgreSQL, wrk -c1)" \
  "$(ms "$large_p50")$(flag_errors "$errors")" \
  "same with $(commas "$METRICS_SMALL") orders stored: $(ms "$small_p50")" \
  "$(ratio "$large_p50" "$small_p50")" "< 5 ms; ratio ≤ 2.0" \
  "$(with_errors "$(verdict "$large_p50 < 5" "$large_p50 / $small_p50 <= 2.0")" "$errors")"
for shape in page filtered; do
  large_var="large_${shape}_p50" small_var="small_${shape}_p50"
  errors_var=$((large_${shape}_errors + small_${shape}_errors))
  path_var=DASHBOARD_PAGE
  [[ $shape == filtered ]] && path_var=DASHBOARD_FILTERED
  row "dashboard's table read \`GET ${!path_var}\` median latency, $(commas "$METRICS_ORDERS") orders stored (PostgreSQL, wrk -c1)" \
    "$(ms "${!large_var}")$(flag_errors "$errors_var")" \
    "same with $(commas "$METRICS_SMALL") orders stored: $(ms "${!small_var}")" \
    "$(ratio "${!large_var}" "${!small_var}")" "< 5 ms; ratio ≤ 2.0" \
    "$(with_errors "$(verdict "${!large_var} < 5" "${!large_var} / ${!small_var} <= 2.0")" "$errors_var")"
done
row "order-server peak RSS (VmHWM) under the POST load, PostgreSQL" \
  "$PG_POST_RSS MB" "—" "—" "< $RSS_LIMIT_MB MB" "$(verdict "$PG_POST_RSS < $RSS_LIMIT_MB")"
row "order-server peak RSS (VmHWM) with $(commas "$METRICS_ORDERS") orders stored, PostgreSQL" \
  "$PG_LARGE_RSS MB" "—" "—" "< $RSS_LIMIT_MB MB" "$(verdict "$PG_LARGE_RSS < $RSS_LIMIT_MB")"
row "order-server peak RSS (VmHWM) in memory, holding the $(commas "$MEM_HELD") orders posted" \
  "$MEM_RSS MB" "—" "—" "— (grows with the orders held)" "—"
step "stopping the server"
stop_server "$PG_PID"
say "($((SECONDS - phase_started)) s)"

fi

if wants burndown; then
# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
# pgbench's clients claim and complete one row per transaction for BENCH_SECONDS, over a table
# of BENCH_BURNDOWN_ORDERS PENDING rows (more than they get through), so that every claim
# finds a row.
burn_rows=$BURN_ORDERS
# The reference table copies the engine's: a run of this phase alone migrates first.
if [[ -z $(bench_sql -Atc "SELECT to_regclass('order_engine_orders')") ]]; then
  DATABASE_URL="$BENCH_URL" "$BURNDOWN_BIN" --backend postgres --orders 1 >/dev/null ||
    die "bench-burndown could not migrate the bench database"
fi
bench_sql -c 'DROP TABLE IF EXISTS bench_burn' \
  -c 'CREATE TABLE bench_burn (LIKE order_engine_orders INCLUDING ALL)' \
  -c "CREATE INDEX bench_burn_pending ON bench_burn (id) WHERE status = 'PENDING'"
burn_tps=() burn_failed=() engine_pg=()
for ((run = 1; run <= RUNS; run++)); do
  step "burn-down on PostgreSQL, run $run/$RUNS: pgbench claim+complete for ${SECS} s over $(commas "$burn_rows") rows, then the engine on $(commas "$BURN_ORDERS")"
  bench_sql -c 'TRUNCATE bench_burn RESTART IDENTITY' -c "
    INSERT INTO bench_burn (user_id, item_ids, total_amount, status)
    SELECT 'user-' || g, ARRAY['item1', 'item2'], 59.99, 'PENDING' FROM generate_series(1, $burn_rows) AS g" \
    -c 'VACUUM ANALYZE bench_burn'
  result=$(pgbench_run "burn-$run" "$BURN_SQL" "-T$SECS")
  read -r tps failed <<<"$result"
  left=$(pg_psql "$BENCH_URL" -Atqc "SELECT count(*) FROM bench_burn WHERE status = 'PENDING'")
  ((left > 0 && failed == 0)) || die "the pgbench burn-down ran out of rows ($left left) or failed ($failed failed transactions)"
  burn_tps+=("$tps") burn_failed+=("$failed")
  say "pgbench $(commas "$tps") claims+completions/s"
  out=$(DATABASE_URL="$BENCH_URL" "$BURNDOWN_BIN" --backend postgres --orders "$BURN_ORDERS") ||
    die "bench-burndown on PostgreSQL failed (its output is above)"
  rate=$(printf '%s\n' "$out" | sed -n 's/^orders_per_sec=\([0-9.]*\) .*/\1/p')
  [[ -n $rate ]] || die "bench-burndown printed no orders_per_sec: $out"
  engine_pg+=("$rate")
  say "engine $(commas "$rate") orders/s"
done
m_burn=$(median "${burn_tps[@]}") m_engine=$(median "${engine_pg[@]}")
row "burn-down of $(commas "$BURN_ORDERS") PENDING orders to COMPLETED, zero-delay handler, PostgreSQL" \
  "$(commas "$m_engine") orders/s" \
  "pgbench -c$CONNS claim (FOR UPDATE SKIP LOCKED) + UPDATE to COMPLETED: $(commas "$m_burn")/s" \
  "$(ratio "$m_engine" "$m_burn")" "≥ 10,000/s; ratio ≥ 2.0" \
  "$(verdict "$m_engine >= 10000" "$m_engine / $m_burn >= 2.0")"
say "($((SECONDS - phase_started)) s)"

# The burn-down as an operator sees it: an API-only server (WORKERS=0) takes in a backlog of
# at least OPERATOR_BACKLOG orders over HTTP and stops; a server with workers then starts on
# it, timed from its first 200 on /readyz to no PENDING or PROCESSING order left, counted in
# SQL. Sets OP_ORDERS and OP_SECONDS; not to be called in a subshell (the servers must be our
# children).
OPERATOR_BACKLOG=${BENCH_OPERATOR_BACKLOG:-50000}
operator_burn_down() {
  local run=$1 pid ready left deadline
  bench_sql -c 'TRUNCATE order_engine_orders RESTART IDENTITY'
  start_server "api-only-$run" RUST_LOG=warn WORKERS=0 DATABASE_URL="$BENCH_URL" "$SERVER_BIN"
  pid=$SERVER_PID
  OP_ORDERS=0
  while ((OP_ORDERS < OPERATOR_BACKLOG)); do
    wrk_run "backlog-$run" "http://127.0.0.1:$SERVER_PORT/orders" "$POST_LUA" 5 >/dev/null
    OP_ORDERS=$(bench_sql -Atc "SELECT count(*) FROM order_engine_orders WHERE status = 'PENDING'")
  done
  stop_server "$pid"
  launch_until_ready "workers-$run" 60 PROCESSING_DELAY_MS=0
  pid=$SERVER_PID
  ready=$(date +%s.%N)
  deadline=$((SECONDS + 600))
  # Polled through the counters the triggers keep in each write's own transaction (80 rows):
  # a count(*) of tens of thousands of unfinished rows every 50 ms would take the server's CPU.
  # The table itself is counted once at the end.
  while :; do
    left=$(bench_sql -Atc "SELECT coalesce(sum(orders), 0) FROM order_engine_status_counts WHERE status IN ('PENDING', 'PROCESSING')")
    ((left == 0)) && break
    ((SECONDS < deadline)) || die "the backlog was not worked off within 600 s ($left left)"
    sleep 0.05
  done
  OP_SECONDS=$(calc "$(date +%s.%N) - $ready")
  left=$(bench_sql -Atc "SELECT count(*) FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING')")
  ((left == 0)) || die "the counters said the backlog was worked off, but $left orders are unfinished"
  stop_server "$pid"
}
op_rate=()
for ((run = 1; run <= RUNS; run++)); do
  step "burn-down as an operator sees it, run $run/$RUNS: a backlog of at least $(commas "$OPERATOR_BACKLOG") orders from an API-only server, then a server with workers"
  operator_burn_down "$run"
  op_rate+=("$(calc "$OP_ORDERS / $OP_SECONDS")")
  say "$(commas "$OP_ORDERS") orders in $OP_SECONDS s from /readyz: $(commas "${op_rate[-1]}") orders/s"
done
m_op=$(median "${op_rate[@]}")
row "burn-down as an operator sees it: a server with workers started on $(commas "$OPERATOR_BACKLOG")+ PENDING orders posted to an API-only server, from its first 200 on /readyz to none left (SQL), PostgreSQL" \
  "$(commas "$m_op") orders/s" \
  "the pgbench claim + complete figure above: $(commas "$m_burn")/s" \
  "$(ratio "$m_op" "$m_burn")" "≥ 10,000/s; ratio ≥ 2.0" \
  "$(verdict "$m_op >= 10000" "$m_op / $m_burn >= 2.0")"
say "($((SECONDS - phase_started)) s)"

phase_started=$SECONDS
engine_mem=()
for ((run = 1; run <= RUNS; run++)); do
  step "burn-down in memory, run $run/$RUNS: $(commas "$BURN_ORDERS") orders"
  out=$("$BURNDOWN_BIN" --backend memory --orders "$BURN_ORDERS") ||
    die "bench-burndown in memory failed (its output is above)"
  rate=$(printf '%s\n' "$out" | sed -n 's/^orders_per_sec=\([0-9.]*\) .*/\1/p')
  [[ -n $rate ]] || die "bench-burndown printed no orders_per_sec: $out"
  engine_mem+=("$rate")
  say "engine $(commas "$rate") orders/s"
done
m_engine=$(median "${engine_mem[@]}")
row "burn-down of $(commas "$BURN_ORDERS") PENDING orders to COMPLETED, zero-delay handler, in memory" \
  "$(commas "$m_engine") orders/s" "the PostgreSQL pgbench figure above: $(commas "$m_burn")/s" \
  "$(ratio "$m_engine" "$m_burn")" "— (reference only)" "—"
say "($((SECONDS - phase_started)) s)"

fi

if wants steps; then
# ---------------------------------------------------------------------------------------------
# Orders in steps: the same burn-down with a plain handler (one step, whose record is the order
# itself), a one-step pipeline and a three-step pipeline (PROCESSING_STEPS), all zero-delay,
# taken in turn within each run so that the machine's state is shared. Each step boundary is a
# checkpoint write, group-committed on PostgreSQL with the other workers' writes.
phase_started=$SECONDS
STEPS_ORDERS=${BENCH_STEPS_ORDERS:-50000}
burn_with() { # BACKEND [PROCESSING_STEPS]: prints the orders per second
  local backend=$1 steps=${2:-} out rate
  if [[ $backend == postgres ]]; then
    out=$(PROCESSING_STEPS=$steps DATABASE_URL="$BENCH_URL" "$BURNDOWN_BIN" --backend postgres --orders "$STEPS_ORDERS")
  else
    out=$(PROCESSING_STEPS=$steps "$BURNDOWN_BIN" --backend memory --orders "$STEPS_ORDERS")
  fi || die "bench-burndown ($backend, steps '${steps:-none}') failed (its output is above)"
  rate=$(printf '%s\n' "$out" | sed -n 's/^orders_per_sec=\([0-9.]*\) .*/\1/p')
  [[ -n $rate ]] || die "bench-burndown printed no orders_per_sec: $out"
  printf '%s\n' "$rate"
}
for backend in postgres memory; do
  plain=() one=() three=()
  for ((run = 1; run <= RUNS; run++)); do
    step "steps on $backend, run $run/$RUNS: burn-down of $(commas "$STEPS_ORDERS") orders, plain handler, then 1 and 3 steps"
    plain+=("$(burn_with "$backend")")
    one+=("$(burn_with "$backend" process)")
    three+=("$(burn_with "$backend" reserve,charge,ship)")
    say "plain $(commas "${plain[-1]}")/s, one step $(commas "${one[-1]}")/s, three steps $(commas "${three[-1]}")/s"
  done
  m_plain=$(median "${plain[@]}") m_one=$(median "${one[@]}") m_three=$(median "${three[@]}")
  row "burn-down of $(commas "$STEPS_ORDERS") orders through a three-step zero-delay pipeline, $backend" \
    "$(commas "$m_three") orders/s" \
    "a one-step pipeline in the same run: $(commas "$m_one")/s (plain handler $(commas "$m_plain")/s)" \
    "$(ratio "$m_three" "$m_one")" "ratio ≥ 0.5" \
    "$(verdict "$m_three / $m_one >= 0.5")"
done
say "($((SECONDS - phase_started)) s)"
fi

# ---------------------------------------------------------------------------------------------
# What PostgreSQL itself spends per order, from POST to COMPLETED: row versions written (heap
# tuples inserted or updated, in every table: orders, queue, counters, keys), WAL bytes and
# records (`pg_stat_wal`), and the CPU time of the cluster's processes. `pg_stat_wal` counts the
# whole cluster, so this runs on a private cluster of its own (the bench's own, if it is
# private), started from PG_BINDIR and removed at exit, with nothing else on it.
if wants cost; then
  phase_started=$SECONDS
  step "cost per order on PostgreSQL: a private cluster"
  if [[ -n ${PG__PRIVATE_DIR:-} ]]; then
    COST_ADMIN_URL=$TEST_DATABASE_URL
  else
    bench_admin_url=$TEST_DATABASE_URL
    pg_start_private || die "could not start a private cluster for the cost per order"
    COST_ADMIN_URL=$TEST_DATABASE_URL
    TEST_DATABASE_URL=$bench_admin_url
  fi
  COST_PGDATA="$PG__PRIVATE_DIR/data"
  COST_URL=$(pg_url_with_database "$COST_ADMIN_URL" order_cost)
  cost_sql() { pg_psql "$COST_URL" -Atq -c 'SET client_min_messages TO warning' "$@"; }
  pg_psql "$COST_ADMIN_URL" -q -c 'DROP DATABASE IF EXISTS order_cost WITH (FORCE)' \
    -c 'CREATE DATABASE order_cost' || die "could not create the database order_cost"
  # CPU seconds of the cluster so far: the postmaster's own and its reaped children's, plus
  # every live child's (a backend that exits is added to the postmaster's reaped time).
  cluster_cpu() {
    local postmaster ticks
    postmaster=$(head -n 1 "$COST_PGDATA/postmaster.pid")
    ticks=$(
      {
        sed 's/^.*) //' "/proc/$postmaster/stat" | awk '{ print $12 + $13 + $14 + $15 }'
        for child in $(ps -o pid= --ppid "$postmaster"); do
          sed 's/^.*) //' "/proc/$child/stat" 2>/dev/null | awk '{ print $12 + $13 }'
        done
      } | awk '{ t += $1 } END { print t }'
    )
    calc "$ticks / $(getconf CLK_TCK)"
  }
  unfinished_sql() { cost_sql -c "SELECT count(*) FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING')"; }
  start_server order-server-cost RUST_LOG=warn PROCESSING_DELAY_MS=0 DATABASE_URL="$COST_URL" "$SERVER_BIN"
  COST_PID=$SERVER_PID COST_PORT=$SERVER_PORT
  wrk_run cost-warmup "http://127.0.0.1:$COST_PORT/orders" "$POST_LUA" 2 >/dev/null
  wait_drained "$COST_PORT"
  # A backend reports its statistics when it exits (an idle one may hold them back for up to
  # 10 s): a fresh server, so that none of the warm-up's are reported after the reset.
  stop_server "$COST_PID"
  start_server order-server-cost RUST_LOG=warn PROCESSING_DELAY_MS=0 DATABASE_URL="$COST_URL" "$SERVER_BIN"
  COST_PID=$SERVER_PID COST_PORT=$SERVER_PORT
  sleep 1
  orders_before=$(cost_sql -c 'SELECT count(*) FROM order_engine_orders')
  cost_sql -c 'CHECKPOINT' -c 'SELECT pg_stat_reset()' -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
  cpu_before=$(cluster_cpu)
  result=$(wrk_run cost "http://127.0.0.1:$COST_PORT/orders" "$POST_LUA")
  read -r rps _ _ errors <<<"$result"
  deadline=$((SECONDS + 300))
  until (($(unfinished_sql) == 0)); do
    ((SECONDS < deadline)) || die "the orders posted for the cost per order were not all finished within 300 s"
    sleep 0.2
  done
  # Stopped, so that its backends exit and report their statistics.
  stop_server "$COST_PID"
  sleep 1
  cpu_after=$(cluster_cpu)
  orders=$(($(cost_sql -c 'SELECT count(*) FROM order_engine_orders') - orders_before))
  ((orders > 0)) || die "no orders were made for the cost per order"
  read -r versions hot deleted <<<"$(cost_sql -F ' ' -c "
    SELECT sum(n_tup_ins + n_tup_upd), sum(n_tup_hot_upd), sum(n_tup_del) FROM pg_stat_user_tables")"
  read -r wal_bytes wal_records wal_fpi <<<"$(cost_sql -F ' ' -c 'SELECT wal_bytes, wal_records, wal_fpi FROM pg_stat_wal')"
  say "$(commas "$orders") orders at $(commas "$rps")/s ($errors errors); per table (inserted, updated, HOT, deleted):"
  cost_sql -F ' ' -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
                       WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname" | sed 's/^/      /'
  per() { awk -v a="$1" -v n="$orders" 'BEGIN { printf "%.2f\n", a / n }'; }
  COST_VERSIONS=$(per "$versions") COST_WAL=$(per "$wal_bytes") COST_RECORDS=$(per "$wal_records")
  COST_CPU_US=$(awk -v a="$cpu_after" -v b="$cpu_before" -v n="$orders" 'BEGIN { printf "%.1f\n", (a - b) * 1e6 / n }')
  say "per order: $COST_VERSIONS row versions ($(per "$hot") of them HOT updates; $(per "$deleted") rows deleted), $COST_WAL WAL bytes in $COST_RECORDS records ($(per "$wal_fpi") full-page images), $COST_CPU_US us of PostgreSQL CPU"
  cost_cell="$COST_VERSIONS row versions, $(commas "$COST_WAL") WAL bytes, $COST_CPU_US us PostgreSQL CPU$(flag_errors "$errors")"
  row "PostgreSQL's work per order, POST to COMPLETED ($(commas "$orders") orders posted at $(commas "$rps")/s, private cluster)" \
    "$cost_cell" \
    "the first design (a queue table beside the orders, counter triggers), measured 2026-12-03: $FIRST_DESIGN_VERSIONS row versions, $(commas "$FIRST_DESIGN_WAL") WAL bytes, $FIRST_DESIGN_CPU_US us" \
    "$(ratio "$COST_WAL" "$FIRST_DESIGN_WAL") (WAL)" "fewer row versions and WAL bytes than the first design" \
    "$(with_errors "$(verdict "$COST_VERSIONS < $FIRST_DESIGN_VERSIONS" "$COST_WAL < $FIRST_DESIGN_WAL")" "$errors")"
  say "($((SECONDS - phase_started)) s)"
fi

# ---------------------------------------------------------------------------------------------
# The migration from the first design (a queue table beside the orders) to the second, as an
# upgrade meets it: a database that a server of the first design wrote (the committed dump the
# migration's test loads), grown to BENCH_METRICS_ORDERS orders, 10,000 of them queued, and a
# server of this version started on it, timed from its launch to its first 200 on /readyz;
# against the same start on the database once migrated.
if wants migration; then
  phase_started=$SECONDS
  MIGRATION_QUEUED=10000
  step "migration: a first-design database of $(commas "$METRICS_ORDERS") orders ($(commas "$MIGRATION_QUEUED") queued)"
  recreate_bench_db
  pg_psql "$BENCH_URL" -q -f order-core/src/postgres/migration/fixtures/first_design.sql >/dev/null ||
    die "could not load the first design's dump"
  bench_sql -c "
    INSERT INTO order_engine_orders
        (user_id, item_ids, total_amount, status, attempts, processing_start_time, processing_end_time)
    SELECT 'user-' || g, ARRAY['item1', 'item2'], 59.99, 'COMPLETED', 1,
           now() - interval '2 seconds', now() - interval '1 second'
      FROM generate_series(1, $((METRICS_ORDERS - MIGRATION_QUEUED - 30))) AS g" \
    -c "INSERT INTO order_engine_orders (user_id, item_ids, total_amount, status, attempts)
        SELECT 'user-' || g, ARRAY['item1', 'item2'], 59.99, 'PENDING', 0
          FROM generate_series(1, $MIGRATION_QUEUED) AS g" \
    -c "INSERT INTO order_engine_queue (order_id)
        SELECT id FROM order_engine_orders WHERE status = 'PENDING' ON CONFLICT DO NOTHING" \
    -c 'VACUUM ANALYZE order_engine_orders, order_engine_queue'
  # time_to_ready LABEL: starts an API-only server on the bench database and prints the
  # seconds from its launch to its first 200 on /readyz; stops it.
  time_to_ready() {
    local launched
    launched=$(date +%s.%N)
    launch_until_ready "$1" 600 WORKERS=0
    calc "$(date +%s.%N) - $launched"
    stop_server "$SERVER_PID" >&2
  }
  # Not in $(...): the server must be this shell's child for stop_server to wait for it.
  time_to_ready migrating >"$WORK/migrating.seconds"
  migrate_secs=$(<"$WORK/migrating.seconds")
  total=$(bench_sql -Atc 'SELECT count(*) FROM order_engine_orders')
  ((total == METRICS_ORDERS)) || die "the migrated database holds $total orders, not $METRICS_ORDERS"
  time_to_ready migrated >"$WORK/migrated.seconds"
  plain_secs=$(<"$WORK/migrated.seconds")
  say "first start (migrating) $migrate_secs s; a start on the migrated database $plain_secs s"
  row "upgrade from the first design, $(commas "$METRICS_ORDERS") orders ($(commas "$MIGRATION_QUEUED") queued): a server's launch to its first 200 on /readyz, migration included" \
    "$(printf '%.2f s' "$migrate_secs")" \
    "the same server's start on the migrated database: $(printf '%.2f s' "$plain_secs")" \
    "$(ratio "$migrate_secs" "$plain_secs")" "— (measured)" "—"
  say "($((SECONDS - phase_started)) s)"
fi

# ---------------------------------------------------------------------------------------------
# Bulk actions: BENCH_BULK_ORDERS FAILED orders (written straight into a database of their own,
# as a day of failures would leave them) retried by one POST /orders/bulk/retry, then the same
# orders, PENDING again, cancelled by one POST /orders/bulk/cancel, each timed from the POST to
# the action's DONE as GET /orders/bulk/{id} reports it, with the longest a page held its
# orders locked (`longestPageMs`). The server has one worker whose orders take 10 minutes, so
# that the retried orders stay PENDING for the cancel. The reference: the same number of rows
# moved by one UPDATE, in one transaction, which locks every row until it commits.
if wants bulk; then
  phase_started=$SECONDS
  step "bulk actions: retry, then cancel, $(commas "$BULK_ORDERS") orders on PostgreSQL"
  BULK_URL=$(pg_url_with_database "$TEST_DATABASE_URL" order_bulk)
  bulk_sql() { pg_psql "$BULK_URL" -Atq -c 'SET client_min_messages TO warning' "$@"; }
  pg_psql "$TEST_DATABASE_URL" -q -c 'DROP DATABASE IF EXISTS order_bulk WITH (FORCE)' \
    -c 'CREATE DATABASE order_bulk' || die "could not create the database order_bulk"
  start_server order-server-bulk RUST_LOG=warn WORKERS=1 PROCESSING_DELAY_MS=600000 \
    DATABASE_URL="$BULK_URL" "$SERVER_BIN"
  BULK_PID=$SERVER_PID BULK_PORT=$SERVER_PORT
  bulk_sql -c "INSERT INTO order_engine_orders (user_id, item_ids, total_amount, status, attempts,
                 last_error, processing_start_time, processing_end_time)
               SELECT 'user-' || (g % 100), ARRAY['book'], 12.50, 'FAILED', 1, 'declined', now(), now()
                 FROM generate_series(1, $BULK_ORDERS) g" -c 'VACUUM ANALYZE order_engine_orders' >/dev/null
  # bulk_run KIND: POSTs the bulk action and waits for its DONE; prints seconds, matched,
  # acted, skipped and the longest page in milliseconds.
  bulk_run() {
    local kind=$1 began answer location action status deadline
    began=$(date +%s.%N)
    answer=$(curl -fsS -D "$WORK/bulk-$kind.headers" -H 'content-type: application/json' \
      -d "{\"limit\": $BULK_ORDERS}" "http://127.0.0.1:$BULK_PORT/orders/bulk/$kind") ||
      die "POST /orders/bulk/$kind failed"
    location=$(tr -d '\r' <"$WORK/bulk-$kind.headers" | awk 'tolower($1) == "location:" { print $2 }')
    [[ -n $location ]] || die "POST /orders/bulk/$kind answered no Location: $answer"
    deadline=$((SECONDS + 600))
    for (( ; ; )); do
      action=$(curl -fsS "http://127.0.0.1:$BULK_PORT$location") || die "GET $location failed"
      status=$(jq -r .action.status <<<"$action")
      [[ $status == DONE ]] && break
      ((SECONDS < deadline)) || die "the bulk $kind was not done within 600 s: $action"
      sleep 0.1
    done
    printf '%s %s %s %s %s\n' "$(calc "$(date +%s.%N) - $began")" "$(jq -r .action.matched <<<"$action")" \
      "$(jq -r .action.acted <<<"$action")" "$(jq -r .action.skipped <<<"$action")" \
      "$(jq -r .action.longestPageMs <<<"$action")"
  }
  command -v jq >/dev/null 2>&1 || apt_install -qq jq >/dev/null || die "jq is needed (sudo apt-get install jq)"
  for kind in retry cancel; do
    read -r secs matched acted skipped longest <<<"$(bulk_run "$kind")"
    say "bulk $kind: $(commas "$matched") selected, $(commas "$acted") acted on, $skipped skipped, in $(printf '%.2f' "$secs") s; longest page $(ms "$longest")"
    # The reference: the same rows moved back in one statement, timed by psql.
    if [[ $kind == retry ]]; then
      from=PENDING to=FAILED
    else
      from=CANCELLED to=PENDING
    fi
    # (An unfinished order must be due: one made PENDING gets a due time.)
    move="available_at = coalesce(available_at, now())"
    ref_ms=$(bulk_sql -c '\timing on' -c "UPDATE order_engine_orders SET status = '$to', $move WHERE status = '$from'" |
      sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1)
    # Back as the bulk action left them, and vacuumed: the next run meets no dead rows of this one.
    bulk_sql -c "UPDATE order_engine_orders SET status = '$from', $move WHERE status = '$to'" \
      -c 'VACUUM ANALYZE order_engine_orders' >/dev/null
    rate=$(calc "$acted / $secs")
    # The one worker holds one retried order: the cancel selects the others.
    row "bulk $kind of $(commas "$matched") orders by one request, POST to DONE (pages of 1,000, one transaction each)" \
      "$(printf '%.1f s' "$secs") ($(commas "$rate") orders/s); longest lock held $(ms "$longest")" \
      "one UPDATE of the same rows, every row locked until it commits: $(ms "$ref_ms")" \
      "$(ratio "$longest" "$ref_ms") (longest lock)" "≤ 60 s; every order acted on" \
      "$(verdict "$secs <= 60" "$acted == $matched" "$matched >= $BULK_ORDERS - 1")"
  done
  stop_server "$BULK_PID"
  pg_psql "$TEST_DATABASE_URL" -q -c 'DROP DATABASE IF EXISTS order_bulk WITH (FORCE)' || true
  say "($((SECONDS - phase_started)) s)"
fi

# ---------------------------------------------------------------------------------------------
# Sustained load: whether the database stays its size. bench-sustained posts orders at half the
# maximum POST rate on PostgreSQL for BENCH_SUSTAINED_SECONDS (ten minutes), every tenth with an
# Idempotency-Key, to a server with its workers on (PROCESSING_DELAY_MS=0: each order is taken
# in, claimed and completed as it comes) that keeps keys 60 s (IDEMPOTENCY_TTL_SECS; the default
# day would never let the keys table reach its steady state in the run), and samples the tables
# every 10 s. Its bounds: the bytes added per order in the second half under 1.05 times the
# first half's; dead rows in the orders table under 10% of its live ones after the first minute;
# each small table (counters, bulk actions and items, migrations) under 1 MiB and the keys under
# 16 MiB. The maximum is the http phase's POST figure when it ran, else measured here as that
# phase measures it. The load runs on a private cluster (a new one, or the cost phase's) at
# PostgreSQL's defaults except autovacuum_naptime (BENCH_SUSTAINED_NAPTIME): a shared server
# cannot be reconfigured, and may run with autovacuum off; at the default minute between
# wake-ups, dead rows pile up to twice the orders of a minute whatever the tables' settings.
if wants sustained; then
  phase_started=$SECONDS
  if [[ -z ${PG_POST_RPS:-} ]]; then
    step "sustained load: the maximum POST rate on PostgreSQL (wrk, as the http phase)"
    recreate_bench_db
    start_server order-server-max RUST_LOG=warn PROCESSING_DELAY_MS=0 DATABASE_URL="$BENCH_URL" "$SERVER_BIN"
    MAX_PID=$SERVER_PID MAX_PORT=$SERVER_PORT
    if ((WARMUP > 0)); then
      wrk_run max-post-warmup "http://127.0.0.1:$MAX_PORT/orders" "$POST_LUA" "$WARMUP" >/dev/null
      wait_drained "$MAX_PORT"
    fi
    max_rps=()
    for ((run = 1; run <= RUNS; run++)); do
      result=$(wrk_run "max-post-$run" "http://127.0.0.1:$MAX_PORT/orders" "$POST_LUA")
      read -r rps _ _ errors <<<"$result"
      say "run $run/$RUNS: $(commas "$rps")/s, $errors errors"
      max_rps+=("$rps")
      wait_drained "$MAX_PORT"
    done
    stop_server "$MAX_PID"
    PG_POST_RPS=$(median "${max_rps[@]}")
  fi
  SUSTAINED_RATE=$(calc "$PG_POST_RPS / 2")
  step "sustained load: $(commas "$SUSTAINED_RATE") orders/s (half of $(commas "$PG_POST_RPS")/s) for $SUSTAINED_SECS s on a private cluster (autovacuum_naptime $SUSTAINED_NAPTIME)"
  # The bench's own cluster or the cost phase's when private (stopped at exit), else a new one,
  # stopped when the phase is done.
  sus_own_cluster=""
  if [[ -n ${PG__PRIVATE_DIR:-} ]]; then
    SUS_ADMIN_URL=$(pg_url_with_database "${COST_ADMIN_URL:-$TEST_DATABASE_URL}" postgres)
  else
    bench_admin_url=$TEST_DATABASE_URL
    pg_start_private || die "could not start a private cluster for the sustained load"
    SUS_ADMIN_URL=$TEST_DATABASE_URL
    TEST_DATABASE_URL=$bench_admin_url
    sus_own_cluster=1
  fi
  SUS_URL=$(pg_url_with_database "$SUS_ADMIN_URL" order_sustained)
  pg_psql "$SUS_ADMIN_URL" -q -c 'DROP DATABASE IF EXISTS order_sustained WITH (FORCE)' -c 'CREATE DATABASE order_sustained' \
    -c "ALTER SYSTEM SET autovacuum_naptime = '$SUSTAINED_NAPTIME'" -c 'SELECT pg_reload_conf()' >/dev/null ||
    die "could not set up the sustained load's database"
  start_server order-server-sustained RUST_LOG=warn PROCESSING_DELAY_MS=0 IDEMPOTENCY_TTL_SECS=60 \
    DATABASE_URL="$SUS_URL" "$SERVER_BIN"
  SUS_PID=$SERVER_PID SUS_PORT=$SERVER_PORT
  sustained_status=0
  "$SUSTAINED_BIN" --url "http://127.0.0.1:$SUS_PORT" --database-url "$SUS_URL" \
    --rate "$SUSTAINED_RATE" --duration-secs "$SUSTAINED_SECS" --sample-secs 10 --settle-secs 60 \
    >"$WORK/sustained.out" 2> >(tee "$WORK/sustained.err" | sed 's/^bench-sustained: /    /' >&2) ||
    sustained_status=$?
  stop_server "$SUS_PID"
  if [[ -n $sus_own_cluster ]]; then
    pg_stop_private
  else
    pg_psql "$SUS_ADMIN_URL" -q -c 'DROP DATABASE IF EXISTS order_sustained WITH (FORCE)' \
      -c 'ALTER SYSTEM RESET autovacuum_naptime' -c 'SELECT pg_reload_conf()' >/dev/null || true
  fi
  if ((sustained_status != 0 && sustained_status != 2)); then
    die "bench-sustained failed (exit $sustained_status; $WORK/sustained.err)"
  fi
  sed 's/^/    /' "$WORK/sustained.out"
  sus_line=$(tail -n 1 "$WORK/sustained.out")
  # sus KEY: a figure from bench-sustained's last line (key=value pairs).
  sus() { tr ' ' '\n' <<<"$sus_line" | awk -F= -v key="$1" '$1 == key { print $2 }'; }
  sus_failed=$(sus failed)
  sus_errors() { with_errors "$1" "$sus_failed"; }
  row "sustained load, $((SUSTAINED_SECS / 60)) min at half the maximum POST rate (workers on, private cluster): table and index bytes per order added, second half against first" \
    "$(commas "$(sus achieved_rate)") orders/s for $(commas "$(sus created)") orders; all tables: $(commas "$(sus schema_second_half)") B/order added (orders table $(commas "$(sus orders_second_half)")); $(commas "$(sus end_bytes_per_order)") B per stored order at the end, $(commas "$(sus mid_bytes_per_order)") at $(sus mid_secs) s" \
    "the first half: $(commas "$(sus schema_first_half)") B/order (orders table $(commas "$(sus orders_first_half)"))" \
    "$(ratio "$(sus schema_second_half)" "$(sus schema_first_half)")" "ratio < 1.05 (all tables and orders table); ≥ 95% of $(commas "$SUSTAINED_RATE")/s" \
    "$(sus_errors "$(verdict "$(sus schema_ratio) < 1.05" "$(sus orders_ratio) < 1.05" "$(sus achieved_rate) >= 0.95 * $SUSTAINED_RATE")")"
  row "sustained load: dead rows in the orders table, most seen after the first minute (a sample every 10 s; autovacuum_naptime $SUSTAINED_NAPTIME)" \
    "$(awk -v v="$(sus max_dead_share)" 'BEGIN { printf "%.1f%% of live rows", v * 100 }'); $(sus orders_autovacuums) autovacuums of the orders table" \
    "—" "—" "< 10%" "$(verdict "$(sus max_dead_share) < 0.10")"
  row "sustained load: small hot tables, largest size seen" \
    "idempotency keys (60 s) $(awk -v v="$(sus keys_max_bytes)" 'BEGIN { printf "%.1f MiB", v / 1048576 }'); counters, bulk actions and items, migrations: $(awk -v v="$(sus hot_max_bytes)" 'BEGIN { printf "%.0f KiB", v / 1024 }') at most" \
    "—" "—" "keys ≤ 16 MiB; the others ≤ 1 MiB each" \
    "$(verdict "$(sus keys_max_bytes) <= 16 * 1048576" "$(sus hot_max_bytes) <= 1048576")"
  say "($((SECONDS - phase_started)) s)"
fi

if wants criterion; then
# ---------------------------------------------------------------------------------------------
phase_started=$SECONDS
step "criterion: benches/processor.rs (as cargo bench runs it; measurement ${CRITERION_SECS} s, warm-up 1 s)"
# The bench executable built above, as `cargo bench` would run it (`--bench`, from the package's
# directory), writing its results to a directory of this run's own.
if ! (cd benches && CRITERION_HOME="$WORK/criterion" "$CRITERION_BIN" --bench --noplot \
  --measurement-time "$CRITERION_SECS" --warm-up-time 1) >"$WORK/criterion.txt" 2>&1; then
  tail -n 30 "$WORK/criterion.txt" >&2
  die "the criterion bench benches/processor.rs failed (output above)"
fi
grep -E '^[a-z_]+/|time:|thrpt:' "$WORK/criterion.txt" || true
# criterion_rate GROUP/FUNCTION: elements per second from the median of criterion's samples
# (estimates.json, nanoseconds per iteration) and its throughput (benchmark.json, elements per
# iteration).
criterion_rate() {
  local dir="$WORK/criterion/$1/new" median_ns elements
  [[ -f $dir/estimates.json && -f $dir/benchmark.json ]] ||
    die "criterion wrote no $dir/estimates.json (output: $WORK/criterion.txt)"
  median_ns=$(grep -o '"median":{"confidence_interval":{[^}]*},"point_estimate":[0-9.eE+-]*' "$dir/estimates.json" |
    sed 's/.*"point_estimate"://')
  elements=$(grep -o '"Elements":[0-9]*' "$dir/benchmark.json" | cut -d: -f2)
  [[ -n $median_ns && -n $elements ]] || die "could not read $dir/estimates.json or benchmark.json"
  calc "$elements / ($median_ns / 1e9)"
}
engine_rate=$(criterion_rate in_memory/submit_to_completed)
mpsc_rate=$(criterion_rate in_memory/reference_mpsc_send_recv)
row "criterion: in-memory OrderProcessor submit → COMPLETED (benches/processor.rs)" \
  "$(commas "$engine_rate") orders/s" "bare tokio mpsc send/recv of the same orders: $(commas "$mpsc_rate")/s" \
  "mpsc/engine $(ratio "$mpsc_rate" "$engine_rate")" "≥ 500,000/s; mpsc/engine ≤ 5" \
  "$(verdict "$engine_rate >= 500000" "$mpsc_rate / $engine_rate <= 5")"
say "($((SECONDS - phase_started)) s)"

fi

# ---------------------------------------------------------------------------------------------
if [[ -n $OUTPUT ]]; then
  write_report
  step "results (written to $OUTPUT), $((SECONDS - started)) s in all"
else
  step "results (phases $PHASES; not written to a file), $((SECONDS - started)) s in all"
fi
printf '\n| figure | project | reference (same run) | ratio | target | result |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${ROWS[@]}"
printf '\n%s target(s) missed.\n' "$MISSES"
if [[ -n ${BENCH_STRICT:-} ]] && ((MISSES > 0)); then
  exit 1
fi
