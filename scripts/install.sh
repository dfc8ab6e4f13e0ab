# shellcheck shell=bash
# Installing what a fresh machine lacks, from Debian's packages. Sourced by scripts/postgres.sh
# (and so by scripts/test.sh and scripts/bench.sh); not meant to be run by itself.

# Whether this run installs system packages itself: under CI (CI set and non-empty), as root.
# Elsewhere the scripts say what to install and leave it to the person running them.
may_install_packages() { [[ -n ${CI:-} && $(id -u) == 0 ]]; }

INSTALL__APT_UPDATED=""

# apt_install ARGS...: `apt-get install -y ARGS`, non-interactive, after one `apt-get update` per
# run (a failed update warns, and the install is tried from the package lists at hand).
# Returns apt-get's status.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    printf 'error: no apt-get to install with (%s)\n' "$*" >&2
    return 1
  fi
  if [[ -z $INSTALL__APT_UPDATED ]]; then
    apt-get update -qq || printf 'warning: apt-get update failed; installing from the package lists at hand\n' >&2
    INSTALL__APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
