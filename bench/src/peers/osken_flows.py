# Peer for `meshwire bench openflow`: os-ken (the Ryu successor) installs the same flows as
# Meshwire into a real ovs-vswitchd and times them until the barrier reply.
# Usage: python3 osken_flows.py PORT FLOWS OUTFILE
import os
import socket
import struct
import sys
import time

from os_ken import cfg
from os_ken.base import app_manager  # imports the controller, which registers --ofp-* options
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

PORT, N, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg.CONF(args=["--ofp-tcp-listen-port", str(PORT), "--ofp-listen-host", "127.0.0.1"],
         project="os_ken")


class FlowBench(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def features(self, ev):
        dp = ev.msg.datapath
        p, o = dp.ofproto_parser, dp.ofproto
        self.t0 = time.perf_counter()
        for i in range(N):
            dst = socket.inet_ntoa(struct.pack("!I", 0x0A000000 + i))
            match = p.OFPMatch(in_port=1, eth_type=0x0800, ipv4_dst=dst)
            inst = [p.OFPInstructionActions(o.OFPIT_APPLY_ACTIONS, [p.OFPActionOutput(2, 0)])]
            dp.send_msg(p.OFPFlowMod(dp, cookie=0x4D57000000000001, priority=100,
                                     match=match, instructions=inst))
        dp.send_msg(p.OFPBarrierRequest(dp))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier(self, ev):
        with open(OUT, "w") as f:
            f.write(str(time.perf_counter() - self.t0))
        os._exit(0)


app_manager.AppManager.run_apps([__name__])
