# Peer for `meshwire bench netconf`: ncclient does the same edit-config + commit round trips
# against the same netconfd, and prints the seconds they took.
# Usage: python3 ncclient_commits.py PORT KEYFILE N
import sys
import time
import warnings

warnings.filterwarnings("ignore")
from ncclient import manager  # noqa: E402

port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
NS = "urn:ietf:params:xml:ns:yang:ietf-interfaces"


def config(i):
    return (
        '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<interfaces xmlns="{NS}"><interface><name>nc0</name>'
        f"<description>ncclient {i}</description>"
        '<type xmlns:ianaift="urn:ietf:params:xml:ns:yang:iana-if-type">ianaift:l2vlan</type>'
        "</interface></interfaces></config>"
    )


with manager.connect(host="127.0.0.1", port=port, username="root", key_filename=key,
                     hostkey_verify=False, allow_agent=False, look_for_keys=False,
                     timeout=30) as m:
    t0 = time.perf_counter()
    for i in range(n):
        m.edit_config(target="candidate", config=config(i))
        m.commit()
    print(time.perf_counter() - t0)
