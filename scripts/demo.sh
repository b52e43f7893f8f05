#!/usr/bin/env bash
# The main job: a controller on the embedded store, the seed's VPN gateway applied, a client
# requesting secure-intranet-connectivity and getting a negotiated connection, which survives a
# controller restart. Leaves nothing running; the store stays in ./demo-state/ to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -q
bin=target/release/meshwire
state=./demo-state
mkdir -p "$state"
port=${MESHWIRE_DEMO_PORT:-7600}
export MESHWIRE_CONTROLLER=http://127.0.0.1:$port
pid=""
start() {
  "$bin" controller --store "redb:$state/meshwire.redb" --listen 127.0.0.1:$port --log warn &
  pid=$!
  for _ in $(seq 100); do curl -sf "$MESHWIRE_CONTROLLER/readyz" >/dev/null && return; sleep 0.1; done
  echo "controller did not start" >&2; exit 1
}
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; pid=""; }
trap stop EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start the controller (embedded redb store in $state)"
start
step "apply the VPN gateway topology, service and endpoint (examples/vpn-gateway.yaml)"
"$bin" apply -f examples/vpn-gateway.yaml
"$bin" get endpoints
step "the client asks for the service by name and label; it configures nothing itself"
"$bin" request secure-intranet-connectivity --client client --label app=sarah
id=$("$bin" get connections -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
"$bin" get connections -o yaml | sed -n '1,60p'
step "restart the controller: the connection and its claims come back"
stop; start
"$bin" get connections
"$bin" get resources
step "close the connection"
"$bin" close "$id"
"$bin" get resources
echo
echo "Look around: $bin controller --store redb:$state/meshwire.redb & then $bin get all."
echo "Tear down: rm -rf $state"
