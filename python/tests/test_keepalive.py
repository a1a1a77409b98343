"""fanout's root pings leaves every 20 s, even between calls; a Python server must
never answer GOAWAY too_many_pings. A client pinging every second (20 times as often)
checks it in seconds: gRPC core's default server would cut it after three pings."""

from __future__ import annotations

import threading
import time

import grpc

from tests.harness import ServiceTestCase
from fanout_py.stubs import health_pb2, health_pb2_grpc

PINGING_CLIENT = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class KeepaliveTest(ServiceTestCase):
    def test_idle_keepalive_pings_never_cost_the_connection(self):
        service = self.start("fanout_py.knn_leaf", "--shard-id", 0, "--shard-count", 1,
                             "--vectors", 10, "--dim", 2)
        channel = grpc.insecure_channel(service.address, options=PINGING_CLIENT)
        self.addCleanup(channel.close)
        states, lock = [], threading.Lock()

        def record(state):
            with lock:
                states.append(state)

        channel.subscribe(record, try_to_connect=True)
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with lock:
            connected_at = len(states)
        time.sleep(5)  # five pings without a call
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with lock:
            after = states[connected_at:]
        self.assertEqual(states[connected_at - 1], grpc.ChannelConnectivity.READY, states)
        self.assertEqual(after, [], f"the connection was lost while idle: {states}")
