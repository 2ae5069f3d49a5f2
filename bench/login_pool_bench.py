#!/usr/bin/python3
"""Login-only benchmark: LOGIN latency direct to Dovecot vs through Portico
without and with [backend_pool], interleaved rounds on one machine.

Starts one Dovecot (harness.Dovecot "mbx1") and two Porticos in front of it
(harness.Portico, 2 workers each): one with backend_pool.size = 0, one with
--pool-size. Each round runs the same login-only load against the three
targets in rotating order: --clients concurrent clients (asyncio, one
thread), each repeating connect, greeting, LOGIN, LOGOUT, close for
--duration. LOGIN latency is from sending the LOGIN line to reading its
tagged OK; CPU per login comes from /proc (Portico = its pid; Dovecot = its
process group, with the reaped children's time the master accounts). The
client and the machine's busy share are reported too: the machine is
shared, so every figure carries the load it was measured under.

With --load-bin PATH the clients are portico_load --login-only (C++, one
thread per client) instead of the built-in asyncio client; --think SECONDS
(with --load-bin) makes each client pause 0.5-1.5x that after every login, so
the load is paced and the CPUs are left partly idle: the latency is then a
login's own path rather than the queue for the cores. A paced run writes its
own section (its heading ends in "paced").

With --haproxy a fourth target joins the rotation: Debian's HAProxy (mode
tcp, no PROXY header, tests/integration/haproxy_harness.py) in front of the
same Dovecot. It relays bytes and does no login work of its own, so its
ratio to direct is what one more loopback hop costs on this machine: the
floor any proxy's LOGIN latency sits on.

Prints a markdown section; --results FILE writes it into that file,
replacing a previous section with the same heading.

Run as root (Dovecot needs it): /usr/bin/python3 bench/login_pool_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench" / "load"))

import harness  # noqa: E402
from haproxy_harness import HAProxy  # noqa: E402
from run_compare import (machine_busy_fraction, machine_model, run_load,  # noqa: E402
                         summarize_login, write_section)

HEADING = "## Login latency: backend connection pool (issue 14 item 3)"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, children: bool) -> float:
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (field 3): utime 14, stime 15, cutime 16, cstime 17.
    t = int(fields[11]) + int(fields[12])
    if children:
        t += int(fields[13]) + int(fields[14])
    return t / TICK


def group_cpu(pgid: int) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc/%s/stat" % entry).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += proc_cpu(int(entry), children=True)
    return total


def machine_times() -> tuple:
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4]


async def client(port: int, users: list, index: int, stop_at: float, out: dict) -> None:
    n = index
    while time.monotonic() < stop_at:
        user = users[n % len(users)]
        n += 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            greeting = await asyncio.wait_for(reader.readline(), 10)
            if not greeting.startswith(b"* OK"):
                raise RuntimeError("greeting %r" % greeting)
            t0 = time.perf_counter()
            writer.write(b'a1 LOGIN "%s" "%s"\r\n' % (user.encode(), harness.PASSWORD.encode()))
            while True:
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line:
                    raise RuntimeError("closed during LOGIN")
                if line.startswith(b"a1 "):
                    break
            t1 = time.perf_counter()
            if not line.startswith(b"a1 OK"):
                raise RuntimeError("LOGIN: %r" % line)
            writer.write(b"a2 LOGOUT\r\n")
            while True:
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line or line.startswith(b"a2 "):
                    break
            writer.close()
            await writer.wait_closed()
            out["lat"].append(t1 - t0)
        except (OSError, RuntimeError, asyncio.TimeoutError) as e:
            out["errors"] += 1
            if len(out["first_errors"]) < 3:
                out["first_errors"].append(str(e))


def run_round_tool(load_bin: str, port: int, clients: int, duration: float, user_count: int,
                   portico_pid: int | None, dovecot_pgid: int, think: float) -> dict:
    """The same round with portico_load --login-only (C++, one thread per
    client), read through run_compare's run_load and summarize_login."""
    cmd = [load_bin, "--login-only", "--json", "--port", str(port), "--sessions", str(clients),
           "--duration", "%gs" % duration, "--users", "user%02d", "--user-count", str(user_count),
           "--password", harness.PASSWORD, "--pgid", str(dovecot_pgid),
           "--think-time", "%gms" % (think * 1000)]
    if portico_pid:
        cmd += ["--pid", str(portico_pid)]
    report = run_load(cmd, timeout=duration + 60)
    r = summarize_login(report, portico_pid or -1)
    return {
        "logins": r["commands"], "lps": r["cps"], "p50": r["p50"], "p99": r["p99"],
        "portico_us": r["portico_us"], "dovecot_us": r["dovecot_us"], "client_us": r["load_us"],
        "busy_pct": r["busy_pct"], "errors": r["errors"],
        "first_errors": [report["first_error"]] if report["first_error"] else [],
    }


def run_round(port: int, clients: int, duration: float, users: list, portico_pid: int | None,
              dovecot_pgid: int) -> dict:
    out = {"lat": [], "errors": 0, "first_errors": []}
    p0 = proc_cpu(portico_pid, False) if portico_pid else 0.0
    d0 = group_cpu(dovecot_pgid)
    s0 = proc_cpu(os.getpid(), False)
    b0, i0 = machine_times()
    w0 = time.monotonic()

    async def main():
        stop_at = time.monotonic() + duration
        await asyncio.gather(*(client(port, users, i, stop_at, out) for i in range(clients)))

    asyncio.run(main())
    window = time.monotonic() - w0
    b1, i1 = machine_times()
    p1 = proc_cpu(portico_pid, False) if portico_pid else 0.0
    d1 = group_cpu(dovecot_pgid)
    s1 = proc_cpu(os.getpid(), False)
    lat = sorted(out["lat"])
    n = len(lat)
    per = 1e6 / n if n else float("nan")
    return {
        "logins": n,
        "lps": n / window,
        "p50": lat[n // 2] * 1e6 if n else float("nan"),
        "p99": lat[min(n - 1, int(n * 0.99))] * 1e6 if n else float("nan"),
        "portico_us": (p1 - p0) * per,
        "dovecot_us": (d1 - d0) * per,
        "client_us": (s1 - s0) * per,
        "busy_pct": 100 * (b1 - b0) / ((b1 - b0) + (i1 - i0)),
        "errors": out["errors"],
        "first_errors": out["first_errors"],
    }


ROWS = [
    ("lps", "logins/s", 0),
    ("p50", "LOGIN latency p50 (µs)", 0),
    ("p99", "LOGIN latency p99 (µs)", 0),
    ("dovecot_us", "Dovecot CPU µs / login", 0),
    ("portico_us", "proxy CPU µs / login (Portico or HAProxy)", 0),
    ("client_us", "client CPU µs / login", 0),
    ("busy_pct", "machine busy (% of all cores)", 0),
    ("errors", "errors", 0),
]


COLUMNS = [("direct", "direct"), ("off", "Portico, pool off"), ("on", "Portico, pool on"),
           ("haproxy", "HAProxy (tcp)")]


def markdown(meta: dict) -> str:
    res = meta["results"]
    med = {k: {key: statistics.median(r[key] for r in v) for key, _, _ in ROWS} for k, v in res.items()}
    columns = [(k, label) for k, label in COLUMNS if k in res]
    names = ", ".join(label for _, label in columns)
    lines = [meta["heading"], ""]
    lines.append("Measured %s on %s (%d cores), shared with other work: machine %.0f%% busy "
                 "before the rounds (1 s sample). Command:" % (
                     meta["when"], meta["model"], os.cpu_count(), meta["idle_busy"]))
    lines += ["", "    " + meta["command"], ""]
    lines.append("Client: %s. " % meta["client"])
    pacing = (", then pausing a random %g-%g ms" % (meta["think"] * 500, meta["think"] * 1500)
              if meta["think"] else "")
    lines.append("%d clients, each repeating connect, greeting, LOGIN, LOGOUT, close%s; %d rounds "
                 "of %s per target, targets interleaved (%s; order rotating per round). Latency: "
                 "LOGIN sent to its tagged OK. One Dovecot; each Portico has %d worker(s); pool on: "
                 "size = %d per worker. Medians over rounds:" % (
                     meta["clients"], pacing, meta["rounds"], meta["duration"], names,
                     meta["workers"], meta["pool_size"]))
    others = [k for k, _ in columns if k != "direct"]
    lines += ["", "| | " + " | ".join(label for _, label in columns) + " | "
              + " | ".join("%s / direct" % k for k in others) + " |",
              "|---|" + "---:|" * (len(columns) + len(others))]

    def f(v, digits):
        return "{:,.{d}f}".format(v, d=digits) if v == v else "n/a"

    for key, label, digits in ROWS:
        d = med["direct"][key]

        def r(a):
            return "%.2f" % (a / d) if d and a == a and d == d and key not in (
                "busy_pct", "errors", "portico_us") else ""
        lines.append("| %s | %s | %s |" % (
            label, " | ".join(f(med[k][key], digits) for k, _ in columns),
            " | ".join(r(med[k][key]) for k in others)))
    lines += ["", "Per round (p50 µs %s): " % " / ".join(k for k, _ in columns) + "; ".join(
        " / ".join("%.0f" % res[k][i]["p50"] for k, _ in columns) for i in range(meta["rounds"])),
        ""]
    lines.append(meta["verdict"])
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--user-count", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="Portico worker threads")
    ap.add_argument("--portico-bin", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--load-bin", default=None,
                    help="drive the load with this portico_load (--login-only) instead of the "
                         "built-in asyncio client")
    ap.add_argument("--haproxy", action="store_true",
                    help="add HAProxy (mode tcp) in front of the same Dovecot as a fourth target")
    ap.add_argument("--think", type=float, default=0.0,
                    help="with --load-bin: seconds each client pauses (0.5-1.5x) after a login")
    args = ap.parse_args()
    if args.think and not args.load_bin:
        sys.exit("login_pool_bench: --think needs --load-bin")
    if os.geteuid() != 0:
        sys.exit("login_pool_bench: run as root (Dovecot test instances need it)")
    users = ["user%02d" % i for i in range(args.user_count)]
    binary = args.portico_bin or harness.portico_bin()
    d = harness.Dovecot("mbx1")
    porticos = []
    lb = HAProxy() if args.haproxy else None
    try:
        d.start()
        for size in (0, args.pool_size):
            p = harness.Portico([d], config={"workers": args.workers, "backend_pool": {"size": size}},
                                binary=binary)
            porticos.append(p)
            p.start()
        targets = [("direct", d.port, None), ("off", porticos[0].port, porticos[0].pid),
                   ("on", porticos[1].port, porticos[1].pid)]
        if lb:
            port = lb.add_frontend("imap", [("127.0.0.1", d.port)], send_proxy=None)
            lb.start()
            targets.append(("haproxy", port, lb.proc.pid))
        idle_busy = 100 * machine_busy_fraction()
        results = {name: [] for name, _, _ in targets}
        for i in range(args.rounds):
            shift = i % len(targets)
            order = targets[shift:] + targets[:shift]
            for name, port, pid in order:
                if args.load_bin:
                    r = run_round_tool(args.load_bin, port, args.clients, args.duration,
                                       args.user_count, pid, d.pid, args.think)
                else:
                    r = run_round(port, args.clients, args.duration, users, pid, d.pid)
                results[name].append(r)
                print("login_pool_bench: round %d %s: %.0f logins/s p50 %.0f µs p99 %.0f µs "
                      "Dovecot %.0f µs/login Portico %.0f µs/login errors %d %s" % (
                          i + 1, name, r["lps"], r["p50"], r["p99"], r["dovecot_us"],
                          r["portico_us"], r["errors"], r["first_errors"]),
                      file=sys.stderr, flush=True)
        stats = porticos[1].admin("stats")["backends"]["mbx1"]
        on_p50 = statistics.median(r["p50"] for r in results["on"])
        direct_p50 = statistics.median(r["p50"] for r in results["direct"])
        dov_on = statistics.median(r["dovecot_us"] for r in results["on"])
        dov_off = statistics.median(r["dovecot_us"] for r in results["off"])
        verdict = ("Pool counters of the pool-on Portico after the run: %d hits, %d misses, "
                   "%d opened, %d expired, %d lost. Goal (LOGIN p50 through Portico with the pool "
                   "within 1.15x direct, no more Dovecot CPU per login than without the pool): "
                   "p50 ratio %.2f, Dovecot CPU per login with / without pool %.2f." % (
                       stats["pool_hits"], stats["pool_misses"], stats["pool_opened"],
                       stats["pool_expired"], stats["pool_lost"], on_p50 / direct_p50,
                       dov_on / dov_off))
        if lb:
            verdict += (" HAProxy, which relays bytes and does no login work: p50 ratio %.2f "
                        "(the cost of one more loopback hop on this machine)." % (
                            statistics.median(r["p50"] for r in results["haproxy"]) / direct_p50))
        meta = {"results": results, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "model": machine_model(), "idle_busy": idle_busy, "clients": args.clients,
                "rounds": args.rounds, "duration": "%gs" % args.duration,
                "pool_size": args.pool_size, "workers": args.workers, "verdict": verdict, "think": args.think,
                "heading": HEADING + (", paced" if args.think else ""),
                "client": ("portico_load --login-only (one thread per client)" if args.load_bin
                           else "the script's asyncio client"),
                "command": "/usr/bin/python3 bench/login_pool_bench.py " + " ".join(sys.argv[1:]).replace(str(REPO) + "/", "")}
        section = markdown(meta)
        print(section)
        if args.results:
            write_section(Path(args.results), section, meta["heading"])
    finally:
        if lb:
            lb.cleanup()
        for p in porticos:
            p.cleanup()
        d.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
