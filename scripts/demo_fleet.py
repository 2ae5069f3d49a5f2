"""The fleet topology of `scripts/demo.sh --fleet` (issue 11), all on loopback:

    client --> HAProxy 127.0.0.1:10143 (send-proxy-v2, checks /readyz)
                 |--> Portico node-a 127.0.0.1:10151 (status 18081) --+
                 |--> Portico node-b 127.0.0.1:10152 (status 18082) --+--> Dovecot mbx1, mbx2
                 '--> Portico node-c 127.0.0.1:10153 (status 18083) --+
               every node shares drains and user holds through redis-server 127.0.0.1:16379

It runs a client session through HAProxy, drains mbx1 on node-a and times
how long the drain takes to reach node-b and node-c, holds a user on node-b
and shows the refusal a client gets through HAProxy on whichever node it
lands, then prints `porticoctl fleet` of one node. Called by scripts/demo.py.
"""

import re
import time
from pathlib import Path

from harness import Portico, wait_until
from haproxy_harness import HAProxy
from lookup_harness import RedisServer

FRONT_PORT = 10143
REDIS_PORT = 16379
NODES = {"node-a": (10151, 18081), "node-b": (10152, 18082), "node-c": (10153, 18083)}


def step(text):
    print("  -> %s" % text, flush=True)


def start(backends, run_dir: Path, repo: Path, started: list):
    """Starts Redis, the three nodes and HAProxy (each appended to `started`
    as soon as it runs, so the caller stops it); returns (nodes, front port)."""
    redis = RedisServer(port=REDIS_PORT)
    started.append(redis)
    redis.start()
    print("redis-server on %s (fleet state)" % redis.address)
    nodes = []
    for name, (port, status_port) in NODES.items():
        listener = {"address": "127.0.0.1:%d" % port, "proxy_protocol": True,
                    "trusted_networks": ["127.0.0.0/8"]}
        node = Portico(backends, workdir=run_dir / name, listen_port=port, status_port=status_port,
                       cwd=repo, config={"workers": 1, "listen": [listener],
                                         "fleet": {"redis": redis.address, "node": name,
                                                   "on_redis_down": "local"}})
        started.append(node)
        node.start()
        nodes.append(node)
        print("Portico %s on 127.0.0.1:%d (PROXY protocol from 127.0.0.0/8), status :%d, "
              "admin %s" % (name, port, status_port, node.admin_socket))
    lb = HAProxy(workdir=run_dir / "haproxy")
    lb.add_frontend("imap", [("127.0.0.1", n.port, n.status_port) for n in nodes],
                    send_proxy="v2", check=True, port=FRONT_PORT)
    started.append(lb)
    lb.start()
    print("HAProxy on 127.0.0.1:%d: roundrobin over the nodes, send-proxy-v2, GET /readyz checks"
          % FRONT_PORT)
    if not wait_until(lambda: all(n.admin("fleet")["fleet"]["connected"] for n in nodes), 15):
        raise RuntimeError("the nodes did not all reach redis %s" % redis.address)
    return nodes, FRONT_PORT


def drained(node, backend) -> bool:
    return any(b["name"] == backend and b["drained_by_operator"]
               for b in node.admin("backend list")["backends"])


def login_reply(port: int, user: str, password: str) -> str:
    import imaplib
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        typ, data = m.login(user, password)
        m.logout()
        text = re.sub(r"\[CAPABILITY [^]]*\]", "[CAPABILITY ...]", data[0].decode(errors="replace"))
        return "%s %s" % (typ, text)
    except imaplib.IMAP4.error as e:
        text = e.args[0] if e.args else ""
        return "NO %s" % (text.decode(errors="replace") if isinstance(text, bytes) else text)
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def show(nodes, port: int, password: str) -> bool:
    """Drain, hold and the fleet view, as an operator would see them; true
    when each did what it should (the demo's verdict under --once)."""
    a, b, c = nodes
    print("\nShared drain: `porticoctl backend drain mbx1` on node-a", flush=True)
    began = time.monotonic()
    reply = a.admin("backend drain mbx1")
    reached = wait_until(lambda: drained(b, "mbx1") and drained(c, "mbx1"), 5, interval=0.002)
    step("node-a says: %s; node-b and node-c drained it %s" % (
        reply.get("fleet"), "after %.1f ms" % ((time.monotonic() - began) * 1000)
        if reached else "NOT within 5 s"))
    print("\nUser hold for a mailbox move: `porticoctl user hold bob --ttl 1m` on node-b")
    b.admin("user hold bob --ttl 1m")
    wait_until(lambda: all("bob" in str(n.admin("user list")) for n in nodes), 5)
    replies = [login_reply(port, "bob", password) for _ in range(3)]  # roundrobin: every node
    for reply in replies:
        step("LOGIN bob through HAProxy: %s" % reply)
    other = login_reply(port, "carol", password)
    step("LOGIN carol through HAProxy: %s" % other)
    held = all(r.startswith("NO [UNAVAILABLE]") for r in replies) and other.startswith("OK")
    print("\nFleet view of each node (`porticoctl fleet`):")
    for node in nodes:
        f = node.admin("fleet")["fleet"]
        shared = ", ".join("%s drained by %s" % (name, v["by"])
                           for name, v in sorted(f["backends"].items()) if v["drained"])
        holds = ", ".join("%s (%d s left)" % (h["user"], h["remaining_ms"] // 1000)
                          for h in f["holds"])
        step("%s: %s %s; drains: %s; holds: %s" % (
            f["node"], f["redis"], "connected" if f["connected"] else "DOWN",
            shared or "none", holds or "none"))
    b.admin("user release bob")
    a.admin("backend enable mbx1")
    step("released bob and enabled mbx1 again (from node-b and node-a)")
    sockets = " ".join("--socket %s" % n.admin_socket for n in nodes[:1])
    print("""
Connect yourself through HAProxy: 127.0.0.1:%(port)d (users alice, bob, carol, password %(pw)s)
  Each node:  build/proxy/porticoctl %(sock)s fleet | sessions | user hold alice --ttl 5m
  Kill a node (kill <pid>) and HAProxy's checks take it out within about a second;
  the other nodes keep the shared state.
""" % {"port": port, "pw": password, "sock": sockets})
    if not (reached and held):
        print("demo: the drain or the hold did not reach every node", flush=True)
    return reached and held
