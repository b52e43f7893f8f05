#!/usr/bin/env bash
# The main job, as root: install what is missing, build, bring up the VPN-gateway lab (network
# namespaces on this machine, its own controller on the embedded redb store, a node agent in
# the host's namespace wiring the kernel data plane), let a client ask for the service by name
# and label, and show its ping through the gateway to the corporate network. The lab stays up to look around; the last lines say how to
# tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "the demo creates network namespaces: run it as root" >&2
  exit 1
fi
scripts/install-deps.sh
cargo build --release --locked -q
bin=$PWD/target/release/meshwire
lab=labs/vpn-gateway/lab.yaml
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "bring up the lab: hosts and workloads as namespaces, a controller with the embedded store, a node agent per host"
"$bin" lab down vpn-gateway >/dev/null 2>&1 || true
"$bin" lab up "$lab"
export MESHWIRE_CONTROLLER=$(cat /run/meshwire/labs/vpn-gateway/controller.url)
"$bin" get endpoints

step "the client asks for secure-intranet-connectivity with label app=sarah; it configures nothing itself"
"$bin" request secure-intranet-connectivity --client worker --name clab-vpn-gateway-client --label app=sarah

step "what the client got: an interface, an address and a route, all from Meshwire"
ip -n clab-vpn-gateway-client -br addr show nsm-1
ip -n clab-vpn-gateway-client route show proto 200

step "the client pings corp (10.60.0.10) through the gateway"
ip netns exec clab-vpn-gateway-client ping -c 3 10.60.0.10

cat <<EOT

Look around:
  export MESHWIRE_CONTROLLER=$MESHWIRE_CONTROLLER
  $bin get all
  $bin lab inspect $lab
  ip netns exec clab-vpn-gateway-client ping 10.60.0.10
Tear down:
  $bin lab down vpn-gateway
EOT
