#!/usr/bin/python3
"""Time for an operator drain to reach every node of a fleet (issue 11).

Starts a real redis-server, two Dovecot backends and --nodes Portico nodes
([fleet] redis set, one worker each), all on loopback. Then --drains times:
an operator drain (or enable, alternately) of mbx1 on one node, rotating
over the nodes, timed from sending the admin command to the moment every
other node's admin socket reports the new state (polled every 2 ms). Prints
the median and the maximum.

    PORTICO_BIN=build/proxy/portico /usr/bin/python3 bench/fleet_drain_bench.py \
        --nodes 3 --drains 20
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import Dovecot, Portico, wait_until  # noqa: E402
from lookup_harness import RedisServer  # noqa: E402


def drained(p, backend="mbx1"):
    for b in p.admin("backend list")["backends"]:
        if b["name"] == backend:
            return b["drained_by_operator"]
    raise RuntimeError("no backend %s" % backend)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--drains", type=int, default=20)
    ap.add_argument("--deadline", type=float, default=10.0, help="per drain, seconds")
    args = ap.parse_args()

    redis = RedisServer().start()
    backends, nodes = [], []
    try:
        for name in ("mbx1", "mbx2"):
            backends.append(Dovecot(name).start())
        for i in range(args.nodes):
            nodes.append(Portico(backends, config={
                "workers": 1, "fleet": {"redis": redis.address, "node": "node-%d" % i}}).start())
        if not wait_until(lambda: all(n.admin("fleet")["fleet"]["connected"] for n in nodes), 10):
            raise RuntimeError("nodes did not reach Redis")
        times = []
        for i in range(args.drains):
            origin = nodes[i % len(nodes)]
            others = [n for n in nodes if n is not origin]
            want = i % 2 == 0  # drain, enable, drain, ...
            start = time.monotonic()
            reply = origin.admin("backend %s mbx1" % ("drain" if want else "enable"))
            if not reply.get("ok") or reply.get("fleet") != "published":
                raise RuntimeError("drain refused: %r" % reply)
            pending = list(others)
            deadline = start + args.deadline
            while pending and time.monotonic() < deadline:
                pending = [n for n in pending if drained(n) != want]
                if pending:
                    time.sleep(0.002)
            if pending:
                raise RuntimeError("drain %d did not reach %s within %ss" % (i, pending, args.deadline))
            times.append((time.monotonic() - start) * 1000)
        print("fleet drain propagation: %d nodes, %d drains/enables" % (len(nodes), len(times)))
        print("  median %.1f ms, max %.1f ms, min %.1f ms" % (
            statistics.median(times), max(times), min(times)))
        print("  all (ms): " + " ".join("%.1f" % t for t in times))
        return 0
    finally:
        for n in nodes:
            n.cleanup()
        for b in backends:
            b.cleanup()
        redis.cleanup()


if __name__ == "__main__":
    sys.exit(main())
