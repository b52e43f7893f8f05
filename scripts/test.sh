#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Peers the tests drive: schemathesis fuzzes the REST API from its OpenAPI document; grpcio-tools
# builds a Python NSM client from the upstream protos; kubernetes-validate holds the Kubernetes
# API schemas the shipped manifests are checked against.
python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5" grpcio-tools "kubernetes-validate==1.37.0"
command -v pyenv >/dev/null && pyenv rehash || true
export MESHWIRE_REQUIRE_ALL=1   # tests needing etcd fail instead of skipping
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
