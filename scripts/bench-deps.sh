#!/usr/bin/env bash
# The peers `meshwire bench openflow|ovsdb` compares against: os-ken (OpenFlow controller, the
# Ryu successor), the Open vSwitch Python IDL, ncclient (NETCONF) and pysnmp, from PyPI. The Debian peers (ovs-ofctl,
# ovs-vsctl) come with openvswitch-switch from install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
apt-get install -y --no-install-recommends wrk   # bench rest's load tool
python3 -m pip install --quiet --disable-pip-version-check os-ken ovs ncclient pysnmp grpcio-tools
