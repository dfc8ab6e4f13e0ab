# shellcheck shell=bash
# Finds (or starts) the PostgreSQL server the tests run against. Sourced by scripts/test.sh,
# which calls `ensure_postgres`; not meant to be run by itself.
#
# ensure_postgres picks the first that applies:
#   1. TEST_DATABASE_URL, if set; else DATABASE_URL, if set (then TEST_DATABASE_URL is set to
#      it). DATABASE_URL is always unset afterwards: the server's config tests read it.
#   2. A server already answering on 127.0.0.1:5432, as user `postgres` or the current user.
#   3. A private, throwaway cluster started from the machine's PostgreSQL binaries on a free
#      port from 55432 up, in a temporary directory; stopped and removed when the script
#      exits, also when it fails. As root, it runs as the `postgres` system user (or a system
#      user `order-test-pg`, created if needed), since PostgreSQL refuses to run as root.
#   4. No binaries at all: under CI (CI set and non-empty) as root, they are installed with
#      apt-get and step 3 follows; otherwise this says how to install them and fails.
# It exports TEST_DATABASE_URL (an admin URL whose user may CREATE DATABASE) and PG_BINDIR
# (the directory of initdb/pg_ctl/postgres, empty if none was found).
#
# Environment:
#   ORDER_TEST_PG=private   always start a private cluster (step 3), even when a URL is set or
#                           a server answers on 5432; DATABASE_URL is still unset.
#   ORDER_TEST_PG=auto      (or unset) the order above.
#
# Every function returns non-zero on failure instead of relying on `set -e` (which is off
# inside functions called from `if`/`||`), so the caller decides; errors go to stderr.

# shellcheck source=scripts/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

PG__EXIT_HOOKS=()
PG__PRIVATE_DIR=""
PG__RUN_AS=""

pg_say() { printf '==> PostgreSQL: %s\n' "$*"; }
pg_err() { printf 'error: PostgreSQL: %s\n' "$*" >&2; }

# `url` with any password replaced by ***, for printing.
pg_redact_url() {
  printf '%s\n' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'
}

# `url` with its database (the path) replaced by `database`, the query string kept; the same
# rule as with_database in order-core/src/testing/postgres.rs.
pg_url_with_database() {
  local url=$1 database=$2 base query="" scheme="" authority
  base=${url%%\?*}
  if [[ $url == *\?* ]]; then
    query="?${url#*\?}"
  fi
  if [[ $base == *://* ]]; then
    scheme="${base%%://*}://"
    authority=${base#*://}
  else
    authority=$base
  fi
  authority=${authority%%/*}
  printf '%s%s/%s%s\n' "$scheme" "$authority" "$database" "$query"
}

# Runs the hooks registered with pg_at_exit, last first; keeps the script's exit status.
pg__run_exit_hooks() {
  local status=$? i
  set +e
  for ((i = ${#PG__EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
    "${PG__EXIT_HOOKS[i]}"
  done
  PG__EXIT_HOOKS=()
  return "$status"
}

# Registers a function (by name, no arguments) to run when the script exits, however it
# exits: success, failure under `set -e`, or Ctrl-C / SIGTERM / SIGHUP.
pg_at_exit() {
  PG__EXIT_HOOKS+=("$1")
  trap pg__run_exit_hooks EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Prints the path of a PostgreSQL client program (psql, pg_isready): from PATH, else from
# PG_BINDIR. Fails if there is none.
pg_tool() {
  local path
  if path=$(command -v "$1" 2>/dev/null); then
    printf '%s\n' "$path"
  elif [[ -n ${PG_BINDIR:-} && -x ${PG_BINDIR}/$1 ]]; then
    printf '%s\n' "$PG_BINDIR/$1"
  else
    return 1
  fi
}

# psql with no password prompt, no ~/.psqlrc, a connect timeout, and stdin closed.
pg_psql() {
  local psql
  if ! psql=$(pg_tool psql); then
    pg_err "psql not found (install postgresql-client, or put it on PATH)"
    return 1
  fi
  PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5} "$psql" -X -w -v ON_ERROR_STOP=1 "$@" </dev/null
}

# Succeeds when `url` answers and its user may create databases.
pg_usable_url() {
  local answer
  answer=$(pg_psql "$1" -Atqc \
    'select rolsuper or rolcreatedb from pg_roles where rolname = current_user' 2>/dev/null) ||
    return 1
  [[ $answer == t ]]
}

# Sets PG_BINDIR to the directory holding initdb, pg_ctl and postgres: `pg_config --bindir`
# if it has them, else the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu), else the real
# directory of an initdb on PATH. Empty (and failure) if none.
pg_find_bindir() {
  local dir candidate best="" initdb
  PG_BINDIR=""
  if dir=$(pg_config --bindir 2>/dev/null) && pg__is_bindir "$dir"; then
    PG_BINDIR=$dir
    return 0
  fi
  for candidate in /usr/lib/postgresql/*/bin; do
    if pg__is_bindir "$candidate"; then
      if [[ -z $best ]] ||
        [[ $(printf '%s\n%s\n' "$best" "$candidate" | sort -V | tail -n 1) == "$candidate" ]]; then
        best=$candidate
      fi
    fi
  done
  if [[ -n $best ]]; then
    PG_BINDIR=$best
    return 0
  fi
  if initdb=$(command -v initdb 2>/dev/null) && initdb=$(readlink -f "$initdb") &&
    pg__is_bindir "${initdb%/*}"; then
    PG_BINDIR=${initdb%/*}
    return 0
  fi
  return 1
}

pg__is_bindir() {
  [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]
}

# Step 2: a server on 127.0.0.1:5432 as `postgres` or the current user; sets
# TEST_DATABASE_URL.
pg_find_local_server() {
  local isready user url me tried=""
  if isready=$(pg_tool pg_isready); then
    if ! "$isready" -q -h 127.0.0.1 -p 5432 -t 3 >/dev/null 2>&1; then
      return 1
    fi
  fi
  me=$(id -un 2>/dev/null) || me=""
  for user in postgres "$me"; do
    if [[ -z $user || ($user == postgres && -n ${tried:-}) ]]; then
      continue
    fi
    tried=1
    url="postgres://$user@127.0.0.1:5432/postgres"
    if pg_usable_url "$url"; then
      TEST_DATABASE_URL=$url
      return 0
    fi
  done
  return 1
}

# Succeeds when nothing listens on 127.0.0.1:`port`.
pg_port_free() {
  local isready status
  if isready=$(pg_tool pg_isready); then
    "$isready" -q -h 127.0.0.1 -p "$1" -t 1 >/dev/null 2>&1 && status=0 || status=$?
    # 0 accepting, 1 rejecting (starting up, shutting down): a server is there.
    if ((status == 0 || status == 1)); then
      return 1
    fi
  fi
  # Anything else listening (pg_isready only knows PostgreSQL).
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Runs a command as the cluster's user (PG__RUN_AS, when root) from the cluster's directory,
# which that user can read (it may not be able to read the caller's working directory).
pg__as_cluster_user() {
  (
    cd "$PG__PRIVATE_DIR" || exit 1
    if [[ -n $PG__RUN_AS ]]; then
      exec runuser -u "$PG__RUN_AS" -- "$@"
    else
      exec "$@"
    fi
  )
}

# As root: the system user to run PostgreSQL as, `postgres` if it exists, else
# `order-test-pg`, created if needed.
pg__cluster_user() {
  local user
  for user in postgres order-test-pg; do
    if id -u "$user" >/dev/null 2>&1; then
      printf '%s\n' "$user"
      return 0
    fi
  done
  user=order-test-pg
  if ! useradd --system --no-create-home --shell /usr/sbin/nologin "$user" >&2; then
    pg_err "could not create the system user $user to run PostgreSQL as (it refuses root)"
    return 1
  fi
  printf '%s\n' "$user"
}

# Step 4: installs the server binaries with apt-get, without starting Debian's own cluster.
pg_install_binaries() {
  local policy=/usr/sbin/policy-rc.d added_policy="" status=0
  pg_say "no PostgreSQL binaries found; installing them (apt-get install postgresql postgresql-contrib)"
  # Keep the package scripts from starting Debian's cluster: ours is started below.
  if [[ ! -e $policy ]]; then
    if printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"; then
      added_policy=1
    fi
  fi
  apt_install --no-install-recommends postgresql postgresql-contrib || status=1
  if [[ -n $added_policy ]]; then
    rm -f "$policy"
  fi
  if ((status != 0)); then
    pg_err "apt-get could not install PostgreSQL"
  fi
  return "$status"
}

pg__no_binaries() {
  pg_err "no PostgreSQL binaries (initdb, pg_ctl, postgres) were found to start a private test cluster with, and no server was set (TEST_DATABASE_URL, DATABASE_URL) or usable on 127.0.0.1:5432.
The PostgreSQL tests need a server; they do not skip. Either:
  - install PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql), then rerun; this
    script starts a private cluster from its binaries (or uses a server on port 5432), or
  - set TEST_DATABASE_URL to a server whose user may create databases, e.g.
    TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/test.sh"
}

# The locale for initdb: C.UTF-8 when the system has it (what Debian's clusters use), else C.
pg__initdb_locale() {
  if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then
    printf 'C.UTF-8\n'
  else
    printf 'C\n'
  fi
}

# Stops the private cluster and removes its directory (an exit hook).
pg_stop_private() {
  local dir=$PG__PRIVATE_DIR
  if [[ -z $dir ]]; then
    return 0
  fi
  if [[ -f $dir/data/postmaster.pid ]]; then
    pg__as_cluster_user "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop \
      >>"$dir/pg_ctl.out" 2>&1 ||
      pg_err "pg_ctl stop failed for $dir (see above); removing it anyway"
  fi
  rm -rf "$dir"
  PG__PRIVATE_DIR=""
  pg_say "stopped the private cluster and removed $dir"
}

# Step 3: initdb and start a cluster in a fresh temporary directory; sets TEST_DATABASE_URL.
pg_start_private() {
  local dir port attempts=0 started="" locale
  if [[ -z ${PG_BINDIR:-} ]]; then
    if may_install_packages; then
      pg_install_binaries || return 1
      if ! pg_find_bindir; then
        pg_err "installed PostgreSQL, but found no initdb/pg_ctl/postgres afterwards"
        return 1
      fi
    else
      pg__no_binaries
      return 1
    fi
  fi

  PG__RUN_AS=""
  if [[ $(id -u) == 0 ]]; then
    PG__RUN_AS=$(pg__cluster_user) || return 1
  fi
  if ! dir=$(mktemp -d /tmp/order-pg.XXXXXX); then
    pg_err "could not create a temporary directory under /tmp"
    return 1
  fi
  PG__PRIVATE_DIR=$dir
  pg_at_exit pg_stop_private
  if ! chmod 755 "$dir" || { [[ -n $PG__RUN_AS ]] && ! chown "$PG__RUN_AS" "$dir"; }; then
    pg_err "could not hand $dir to $PG__RUN_AS"
    return 1
  fi

  locale=$(pg__initdb_locale)
  pg_say "initdb in $dir${PG__RUN_AS:+ (as $PG__RUN_AS)}"
  if ! pg__as_cluster_user "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
    -E UTF8 --locale="$locale" >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    pg_err "initdb failed (output above)"
    return 1
  fi

  port=55432
  while [[ -z $started ]]; do
    while ! pg_port_free "$port"; do
      port=$((port + 1))
    done
    if ((attempts >= 10 || port > 55532)); then
      pg_err "could not start a cluster on a free port in 55432-55532; log: $dir/log"
      tail -n 20 "$dir/log" >&2 2>/dev/null
      return 1
    fi
    attempts=$((attempts + 1))
    pg_say "starting a private cluster on 127.0.0.1:$port from $PG_BINDIR"
    if pg__as_cluster_user "$PG_BINDIR/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
      start >>"$dir/pg_ctl.out" 2>&1; then
      started=1
    elif pg_port_free "$port"; then
      # Not a port race: a real failure.
      cat "$dir/pg_ctl.out" >&2
      tail -n 20 "$dir/log" >&2 2>/dev/null
      pg_err "the private cluster did not start (output above)"
      return 1
    else
      pg_say "port $port was taken meanwhile; trying the next one"
      port=$((port + 1))
    fi
  done

  TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  if ! pg_usable_url "$TEST_DATABASE_URL"; then
    pg_err "the private cluster started but does not answer at $TEST_DATABASE_URL"
    return 1
  fi
}

# Finds or starts the test server (see the top of this file); exports TEST_DATABASE_URL and
# PG_BINDIR and unsets DATABASE_URL.
ensure_postgres() {
  local mode=${ORDER_TEST_PG:-auto} origin=""
  PG_BINDIR=""
  if ! pg_find_bindir && may_install_packages; then
    # The outage test starts and stops a cluster of its own, whatever server the rest use.
    pg_install_binaries && pg_find_bindir || true
  fi
  export PG_BINDIR

  case $mode in
  auto | private) ;;
  *)
    pg_err "ORDER_TEST_PG must be auto or private, not '$mode'"
    return 1
    ;;
  esac

  if [[ $mode == private ]]; then
    pg_start_private || return 1
    origin="a private cluster, forced by ORDER_TEST_PG=private"
  elif [[ -n ${TEST_DATABASE_URL:-} ]]; then
    origin="TEST_DATABASE_URL"
  elif [[ -n ${DATABASE_URL:-} ]]; then
    TEST_DATABASE_URL=$DATABASE_URL
    origin="DATABASE_URL"
  elif pg_find_local_server; then
    origin="the server already running on 127.0.0.1:5432"
  else
    pg_say "no usable server on 127.0.0.1:5432"
    pg_start_private || return 1
    origin="a private cluster"
  fi
  if [[ -n ${DATABASE_URL+set} ]]; then
    unset DATABASE_URL
    pg_say "unset DATABASE_URL for the tests (the server's config tests read it)"
  fi
  export TEST_DATABASE_URL

  if [[ $origin == TEST_DATABASE_URL || $origin == DATABASE_URL ]]; then
    if ! pg_tool psql >/dev/null; then
      pg_say "psql not found; not checking $origin before the tests"
    elif ! pg_usable_url "$TEST_DATABASE_URL"; then
      pg_err "$origin=$(pg_redact_url "$TEST_DATABASE_URL") does not answer, or its user may not create databases (the tests create one each)"
      return 1
    fi
  fi

  pg_say "using $(pg_redact_url "$TEST_DATABASE_URL") ($origin)"
  if [[ -n $PG_BINDIR ]]; then
    pg_say "PG_BINDIR=$PG_BINDIR"
  else
    pg_say "PG_BINDIR is empty: no initdb/pg_ctl/postgres found; tests that start their own cluster cannot"
  fi
}
