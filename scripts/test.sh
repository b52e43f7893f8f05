#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export MESHWIRE_REQUIRE_ALL=1   # tests needing etcd fail instead of skipping
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
