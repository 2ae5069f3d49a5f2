#!/usr/bin/python3
"""Login cost through Portico with each [lookup] kind (issue 10).

Paths, measured in interleaved rounds (direct, hashing, http, redis, then
again), each a bounded window of --duration seconds:

- direct:  clients log in to Dovecot mbx1 itself;
- hashing: through Portico, [lookup] kind = "none" (rendezvous hashing);
- http:    through Portico, kind = "http" against tests/integration/
           auth_service.py (a threaded Python auth_http service in this
           process), cache_ttl = 0: every login asks;
- redis:   through Portico, kind = "redis" against a real redis-server,
           cache_ttl = 0, route:<user> = mbx1's address.

Every login is a fresh TCP connection: greeting, LOGIN (timed from send to
the tagged reply: the login latency), LOGOUT, close, by --clients threads.
CPU: Portico's pid and both Dovecots' process groups from /proc, sampled
around each window; CPU per login = CPU seconds / logins in the window.

portico_load (bench/load) has no login-only scenario (its sessions log in
once and then run commands), hence this script; it reuses the integration
harness for Dovecot, Portico, the auth service and redis-server.

    PORTICO_BIN=build/proxy/portico /usr/bin/python3 bench/lookup_bench.py \
        --rounds 3 --duration 8 --clients 8
"""

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from auth_service import AuthService  # noqa: E402
from harness import PASSWORD, Dovecot, Portico  # noqa: E402
from lookup_harness import RedisServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def login_once(port, user, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        if not f.readline().startswith(b"* OK"):
            raise RuntimeError("no greeting")
        start = time.perf_counter()
        s.sendall(b'a LOGIN %s "%s"\r\n' % (user.encode(), PASSWORD.encode()))
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("closed during LOGIN")
            if line.startswith(b"a "):
                break
        elapsed = time.perf_counter() - start
        ok = line.startswith(b"a OK")
        s.sendall(b"b LOGOUT\r\n")
        while True:
            line = f.readline()
            if not line or line.startswith(b"b "):
                break
        return ok, elapsed


def run_window(port, duration, clients, users):
    stop = time.monotonic() + duration
    lat, errors = [], [0]
    lock = threading.Lock()

    def worker(i):
        n = 0
        mine = []
        while time.monotonic() < stop:
            user = users[(i * 7 + n) % len(users)]
            n += 1
            try:
                ok, elapsed = login_once(port, user)
            except (OSError, RuntimeError):
                ok, elapsed = False, 0
            if ok:
                mine.append(elapsed)
            else:
                with lock:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    return lat, errors[0]


def pct(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per window (<= 30)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    assert 0 < args.duration <= 30, "each run is bounded to 30 s"
    users = ["user%02d" % i for i in range(args.users)]

    started = []
    try:
        mbx1, mbx2 = Dovecot("mbx1"), Dovecot("mbx2")
        for d in (mbx1, mbx2):
            started.append(d)
            d.start()
        host, port = mbx1.address.rsplit(":", 1)
        auth = AuthService({"*": {"status": "OK", "server": host, "port": int(port)}}).start()
        redis = RedisServer().start()
        for u in users:
            redis.set("route:" + u, mbx1.address)
        configs = {
            "hashing": {"workers": 2},
            "http": {"workers": 2, "lookup": {"kind": "http", "url": auth.url, "timeout": "5s",
                                              "cache_ttl": "0s"}},
            "redis": {"workers": 2, "lookup": {"kind": "redis", "address": redis.address,
                                               "timeout": "5s", "cache_ttl": "0s"}},
        }
        porticos = {}
        for name, cfg in configs.items():
            p = Portico([mbx1, mbx2], config=cfg)
            started.append(p)
            p.start()
            porticos[name] = p
        ports = {"direct": mbx1.port, **{k: p.port for k, p in porticos.items()}}
        dovecot_pids = lambda: mbx1.group_pids() + mbx2.group_pids()  # noqa: E731
        for port in ports.values():  # warm-up: processes forked, caches filled
            run_window(port, 1.0, 2, users)
        rows = []
        for r in range(args.rounds):
            for name, port in ports.items():
                pid = [porticos[name].pid] if name in porticos else []
                dpids = dovecot_pids()
                p0, d0, t0 = cpu_of(pid), cpu_of(dpids), time.monotonic()
                lat, errors = run_window(port, args.duration, args.clients, users)
                p1, d1, t1 = cpu_of(pid), cpu_of(dpids), time.monotonic()
                n = len(lat)
                row = {"round": r + 1, "path": name, "logins": n, "errors": errors,
                       "logins_per_s": n / (t1 - t0),
                       "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                       "portico_us_per_login": (p1 - p0) / n * 1e6 if n else 0,
                       "dovecot_us_per_login": (d1 - d0) / n * 1e6 if n else 0}
                rows.append(row)
                print(json.dumps(row), flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
        print("\n| path | logins/s | login p50 (ms) | login p99 (ms) | Portico CPU µs/login | "
              "Dovecot CPU µs/login | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in ports:
            mine = [x for x in rows if x["path"] == name]
            med = lambda k: statistics.median(x[k] for x in mine)  # noqa: E731
            print("| %s | %.0f | %.2f | %.2f | %.0f | %.0f | %d |" % (
                name, med("logins_per_s"), med("p50_ms"), med("p99_ms"),
                med("portico_us_per_login"), med("dovecot_us_per_login"),
                sum(x["errors"] for x in mine)))
        print("\nmachine: %s, %d cores, %s" % (platform.processor() or platform.machine(),
                                              os.cpu_count(), platform.platform()))
    finally:
        for thing in reversed(started):
            try:
                thing.cleanup()
            except Exception as e:  # noqa: BLE001
                print("stopping %r: %s" % (thing, e), file=sys.stderr)
        try:
            auth.stop()
            redis.cleanup()
        except NameError:
            pass


if __name__ == "__main__":
    main()
