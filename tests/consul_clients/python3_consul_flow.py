"""Debian's python3-consul (0.7.1), unchanged, run by Debian's own python3: the flow an
old service runs. Prints one JSON line of what it saw (test_consul_clients.py checks it).
It sends GET for deregister and TTL updates (and no token with them)."""

import json
import sys
import threading
import time

import consul

host, port = sys.argv[1], int(sys.argv[2])
token = sys.argv[3] if len(sys.argv) > 3 else None
c = consul.Consul(host=host, port=port, token=token)
if token:
    # Its GET-style calls (deregister, TTL updates) carry no token: send it on every call.
    c.http.session.headers["X-Consul-Token"] = token
seen = {"version": consul.__version__, "node": c.agent.self()["Config"]["NodeName"]}
seen["registered"] = c.agent.service.register(
    "old",
    service_id="old-1",
    address="10.2.0.1",
    port=7000,
    tags=["v1"],
    check=consul.Check.ttl("10s"),
)
seen["before"] = len(c.health.service("old", passing=True)[1])
seen["passed"] = c.agent.check.ttl_pass("service:old-1", notes="ok")
index, entries = c.health.service("old", passing=True)
seen["passing"] = [
    [e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"]] for e in entries
]
seen["catalog"] = c.catalog.services()[1]
timer = threading.Timer(0.3, lambda: c.agent.check.ttl_warn("service:old-1", notes="slow"))
timer.start()
start = time.monotonic()
new_index, entries = c.health.service("old", index=index, wait="5s")
seen["blocked_s"] = time.monotonic() - start
timer.join()
seen["status"] = entries[0]["Checks"][1]["Status"]
seen["output"] = entries[0]["Checks"][1]["Output"]
seen["index_moved"] = int(new_index) > int(index)
seen["deregistered"] = c.agent.service.deregister("old-1")
seen["after"] = c.health.service("old")[1]
print(json.dumps(seen))
