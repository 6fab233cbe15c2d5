"""Workload for tests/integration/test_api.py: N connections to a local listener, M one-byte sends
on each from the client side; prints JSON with what was received. Stdlib only (runs on targets)."""

import json
import socket
import sys

connections, sends = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
received = 0
for _ in range(connections):
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    for _ in range(sends):
        client.send(b"x")
        received += len(server.recv(1))
    client.close()
    server.close()
print(json.dumps({"received": received}))
