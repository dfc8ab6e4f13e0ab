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

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "tests (cargo test)"
cargo test --workspace --all-features

step "docs (cargo doc, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "example: embedded"
cargo run --quiet -p examples --example embedded

step "benches build"
cargo bench -p benches --no-run

step "all checks passed in $((SECONDS - started)) s"
