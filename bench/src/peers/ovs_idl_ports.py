# Peer for `meshwire bench ovsdb`: the Open vSwitch Python IDL adds N ports to a bridge, either
# one transaction per port or all in one, and prints the seconds it took.
# Usage: python3 ovs_idl_ports.py REMOTE SCHEMA BRIDGE N separate|batch
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import ovs.db.idl  # noqa: E402
import ovs.poller  # noqa: E402

remote, schema, bridge, n, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
helper = ovs.db.idl.SchemaHelper(schema)
helper.register_all()
idl = ovs.db.idl.Idl(remote, helper)
while not (idl.has_ever_connected() and any(r.name == bridge for r in idl.tables["Bridge"].rows.values())):
    idl.run()
    poller = ovs.poller.Poller()
    idl.wait(poller)
    poller.timer_wait(100)
    poller.block()
br = next(r for r in idl.tables["Bridge"].rows.values() if r.name == bridge)


def add(txn, name):
    i = txn.insert(idl.tables["Interface"])
    i.name = name
    p = txn.insert(idl.tables["Port"])
    p.name = name
    p.interfaces = [i]
    br.addvalue("ports", p.uuid)


def commit(txn):
    status = txn.commit_block()
    if status not in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
        sys.exit("commit failed: %s %s" % (status, txn.get_error()))


t0 = time.perf_counter()
if mode == "separate":
    for k in range(n):
        txn = ovs.db.idl.Transaction(idl)
        add(txn, "py%d" % k)
        commit(txn)
else:
    txn = ovs.db.idl.Transaction(idl)
    for k in range(n):
        add(txn, "py%d" % k)
    commit(txn)
print(time.perf_counter() - t0)
