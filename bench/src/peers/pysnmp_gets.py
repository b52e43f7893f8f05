# Peer for `meshwire bench snmp`: pysnmp (asyncio high-level API) does the same sequential
# v2c GETs of sysUpTime.0 against the same snmpd, and prints the seconds they took.
# Usage: python3 pysnmp_gets.py HOST PORT N
import asyncio
import sys
import time
import warnings

warnings.filterwarnings("ignore")
from pysnmp.hlapi.v3arch.asyncio import (  # noqa: E402
    CommunityData, ContextData, ObjectIdentity, ObjectType, SnmpEngine, UdpTransportTarget,
    get_cmd,
)

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


async def main():
    engine = SnmpEngine()
    target = await UdpTransportTarget.create((host, port), timeout=2, retries=1)
    oid = ObjectType(ObjectIdentity("1.3.6.1.2.1.1.3.0"))
    t0 = time.perf_counter()
    for _ in range(n):
        err, status, _, _ = await get_cmd(engine, CommunityData("public"), target, ContextData(), oid)
        if err or status:
            sys.exit(f"pysnmp: {err or status}")
    print(time.perf_counter() - t0)


asyncio.run(main())
