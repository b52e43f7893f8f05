# The kubelet's side of the device plugin API, from Python stubs that grpcio-tools generates
# from the upstream api.proto (kubelet-api/): it serves Registration on DIR/kubelet.sock, and for
# the first plugin that registers it watches the devices (ListAndWatch) and allocates one
# (Allocate), then prints what it saw as JSON and exits.
#
#   python3 kubelet.py STUBS_DIR DIR
import json
import os
import queue
import sys
from concurrent import futures

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402

import api_pb2 as api  # noqa: E402
import api_pb2_grpc as apig  # noqa: E402

plugin_dir = sys.argv[2]
registered = queue.Queue()


class Registration(apig.RegistrationServicer):
    def Register(self, request, context):
        registered.put(request)
        return api.Empty()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
apig.add_RegistrationServicer_to_server(Registration(), server)
sock = os.path.join(plugin_dir, "kubelet.sock")
server.add_insecure_port("unix:" + sock)
server.start()
print("listening", flush=True, file=sys.stderr)

req = registered.get(timeout=30)
channel = grpc.insecure_channel(
    "unix:" + os.path.join(plugin_dir, req.endpoint),
    options=[("grpc.default_authority", "localhost")],
)
plugin = apig.DevicePluginStub(channel)
options = plugin.GetDevicePluginOptions(api.Empty(), timeout=10)
first = next(iter(plugin.ListAndWatch(api.Empty(), timeout=10)))
ids = [d.ID for d in first.devices]
alloc = plugin.Allocate(
    api.AllocateRequest(
        container_requests=[api.ContainerAllocateRequest(devices_ids=ids[:1])]
    ),
    timeout=10,
)
print(
    json.dumps(
        {
            "version": req.version,
            "resource": req.resource_name,
            "endpoint": req.endpoint,
            "preStartRequired": options.pre_start_required,
            "devices": [{"id": d.ID, "health": d.health} for d in first.devices],
            "envs": dict(alloc.container_responses[0].envs),
        }
    )
)
server.stop(0)
