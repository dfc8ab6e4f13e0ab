# shellcheck shell=bash
# PgBouncer for the tests. Sourced by scripts/test.sh; not meant to be run by itself.
#
# ensure_pgbouncer: finds the binary (PGBOUNCER, else /usr/sbin/pgbouncer) and exports
#   PGBOUNCER. Under CI (CI set and non-empty) as root, installs Debian's package `pgbouncer`
#   when it is missing, and stops the service the package starts: the tests start their own.
#   Otherwise a missing binary returns 1 after saying how to install it (the caller skips).
#
# pgbouncer_start DIR UPSTREAM_URL [POOL_SIZE]: starts one in transaction mode on a free
#   loopback port in front of UPSTREAM_URL's server (any database), with its files (log, pid)
#   in DIR (as the postgres user when root); sets PGBOUNCER_PORT. pgbouncer_retarget DIR UPSTREAM_URL
#   points it at another server and reloads it (after a failover, say); pgbouncer_stop DIR
#   stops it. The Rust tests' own is order_core::testing::PgBouncer, set up the same way.

# shellcheck source=scripts/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

ensure_pgbouncer() {
  local bin=${PGBOUNCER:-/usr/sbin/pgbouncer}
  if [[ ! -x $bin ]] && [[ -z ${PGBOUNCER:-} ]] && may_install_packages; then
    apt_install -qq pgbouncer || return 1
    # The package enables and starts a service on port 6432; the tests need none.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
      systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/pgbouncer ]]; then
      /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
    fi
  fi
  if [[ ! -x $bin ]]; then
    printf 'pgbouncer not found at %s: install it (sudo apt-get install pgbouncer) or set PGBOUNCER\n' "$bin" >&2
    return 1
  fi
  export PGBOUNCER=$bin
  printf '==> PgBouncer: %s (%s)\n' "$PGBOUNCER" "$("$PGBOUNCER" --version | head -n 1)"
}

# Writes DIR/pgbouncer.ini and DIR/users.txt for UPSTREAM_URL on PORT.
pgbouncer__write() {
  local dir=$1 url=$2 port=$3 size=${4:-4} rest userinfo hostport user password host upstream_port
  rest=${url#*://}
  rest=${rest%%[/?]*}
  userinfo=${rest%@*}
  hostport=${rest##*@}
  user=${userinfo%%:*}
  password=""
  [[ $userinfo == *:* ]] && password=${userinfo#*:}
  host=${hostport%:*}
  upstream_port=5432
  [[ $hostport == *:* ]] && upstream_port=${hostport##*:}
  printf '"%s" "%s"\n' "$user" "$password" >"$dir/users.txt"
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$host port=$upstream_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $size
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
server_login_retry = 1
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
}

pgbouncer_start() {
  local dir=$1 url=$2 size=${3:-4} port
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pgbouncer__write "$dir" "$url" "$port" "$size"
  if [[ $(id -u) == 0 ]]; then
    chown -R postgres "$dir"
    runuser -u postgres -- "${PGBOUNCER:-/usr/sbin/pgbouncer}" -d "$dir/pgbouncer.ini" \
      >"$dir/start.log" 2>&1 || { cat "$dir/start.log" >&2; return 1; }
  else
    "${PGBOUNCER:-/usr/sbin/pgbouncer}" -d "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 ||
      { cat "$dir/start.log" >&2; return 1; }
  fi
  PGBOUNCER_PORT=$port
}

# Returns once PgBouncer has logged the reload (it handles the signal in its own time).
pgbouncer_retarget() {
  local dir=$1 url=$2 port size reloads tries=0
  port=$(sed -n 's/^listen_port = //p' "$dir/pgbouncer.ini")
  size=$(sed -n 's/^default_pool_size = //p' "$dir/pgbouncer.ini")
  pgbouncer__write "$dir" "$url" "$port" "$size"
  [[ $(id -u) == 0 ]] && chown -R postgres "$dir"
  reloads=$(grep -c 're-reading config' "$dir/pgbouncer.log" || true)
  kill -HUP "$(pgbouncer__pid "$dir")" || return 1
  until (($(grep -c 're-reading config' "$dir/pgbouncer.log" || true) > reloads)); do
    ((++tries < 500)) || { echo "error: pgbouncer in $dir did not reload" >&2; return 1; }
    sleep 0.01
  done
  sleep 0.1
}

pgbouncer_stop() {
  local pid
  pid=$(pgbouncer__pid "$1") && kill "$pid"
}

pgbouncer__pid() {
  cat "$1/pgbouncer.pid" 2>/dev/null
}
