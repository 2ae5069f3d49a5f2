#!/usr/bin/python3
"""What fleet mode costs (issue 11): login and command cost through Portico
with `[fleet]` off and on, interleaved in the same run.

Two Dovecot backends (mbx1, mbx2), one real redis-server, and two Portico
processes of this build in front of the same backends: "off" (no [fleet])
and "on" ([fleet] redis = that redis-server). A routing map pins every load
user to mbx1, so both paths hit the same mailboxes. Each round measures, for
each path (the order alternating from round to round):

- commands: a portico_load run (the run_compare.py mix) for --duration;
  Portico CPU per command from /proc (portico_load --pid);
- logins: --clients threads logging in and out for --login-duration, a
  fresh connection per login (lookup_bench.run_window); login latency =
  LOGIN sent to tagged reply; Portico's and redis-server's CPU per login.

The table gives the medians over the rounds and the ratio on / off.

    /usr/bin/python3 bench/fleet_cost_bench.py --rounds 4 --duration 10s --login-duration 8 \
        --results bench/RESULTS.md

Every wait is bounded: portico_load stops itself, each login window is
bounded, each subprocess has a timeout. Run as root (Dovecot needs it).
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench" / "load"))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import run_compare  # noqa: E402
from lookup_bench import cpu_of, pct, run_window  # noqa: E402
from lookup_harness import RedisServer  # noqa: E402

HEADING = "## Fleet mode: login and command cost, on vs off (issue 11)"


def measure_commands(load_bin, portico, common, window):
    cmd = [load_bin, "--port", str(portico.port), "--pid", str(portico.pid)] + common
    report = run_compare.run_load(cmd, window + 60)
    return run_compare.summarize(report, portico.pid), cmd


def measure_logins(portico, redis_pid, seconds, clients, users):
    pids = [portico.pid]
    p0, r0, t0 = cpu_of(pids), cpu_of([redis_pid]), time.monotonic()
    lat, errors = run_window(portico.port, seconds, clients, users)
    p1, r1, t1 = cpu_of(pids), cpu_of([redis_pid]), time.monotonic()
    n = len(lat)
    return {"logins": n, "errors": errors, "logins_per_s": n / (t1 - t0),
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "portico_us_per_login": (p1 - p0) / n * 1e6 if n else float("nan"),
            "redis_us_per_login": (r1 - r0) / n * 1e6 if n else float("nan")}


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def markdown(meta):
    rows = meta["rows"]
    out = [HEADING, ""]
    out.append("Measured by `bench/fleet_cost_bench.py` on %s (%s), %d cores; machine busy "
               "before the rounds (others' work): %s." % (
                   meta["date"], meta["model"], meta["cores"],
                   ", ".join("%.0f%%" % (b * 100) for b in meta["idle_busy"])))
    out.append("")
    out.append("Two Portico processes of this build (2 workers each) in front of the same two "
               "Dovecots: `[fleet]` off, and on with a real redis-server on loopback. Each of %d "
               "rounds runs, for each (order alternating), %s of portico_load's mixed load "
               "(%d sessions, mix `%s`) and %.0f s of logins (%d client threads, a fresh "
               "connection per login: greeting, LOGIN, LOGOUT). Values are medians over the "
               "rounds; ratio = on / off. redis-server's CPU is measured in both windows: in the \"off\" "
               "window it is what the idle \"on\" node's periodic re-reads cost." % (
                   meta["args"]["rounds"], meta["args"]["duration"], meta["args"]["sessions"],
                   meta["args"]["mix"], meta["args"]["login_duration"], meta["args"]["clients"]))
    out.append("")
    out.append("```\n%s\n```" % meta["script"])
    out.append("")
    out.append("| metric | fleet off | fleet on | ratio |")
    out.append("|---|---:|---:|---:|")
    for label, key, digits in (("Portico CPU µs/command", "portico_us", 1),
                               ("commands/s", "cps", 0),
                               ("command p50 latency (µs)", "p50", 0),
                               ("Portico CPU µs/login", "portico_us_per_login", 0),
                               ("redis-server CPU µs/login", "redis_us_per_login", 1),
                               ("logins/s", "logins_per_s", 0),
                               ("LOGIN p50 (ms)", "p50_ms", 2),
                               ("LOGIN p99 (ms)", "p99_ms", 2)):
        off = median([r for r in rows if r["path"] == "off"], key)
        on = median([r for r in rows if r["path"] == "on"], key)
        ratio = "%.2f" % (on / off) if off and off == off and on == on else "—"
        out.append("| %s | %s | %s | %s |" % (label, run_compare.fmt_num(off, digits),
                                               run_compare.fmt_num(on, digits), ratio))
    errors = sum(r["errors"] + r["login_errors"] for r in rows)
    out.append("")
    out.append("Errors over all rounds: %d. Per round:" % errors)
    out.append("")
    out.append("| round | path | µs/command | µs/login | redis µs/login | LOGIN p50 ms |")
    out.append("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        out.append("| %d | %s | %.1f | %.0f | %.1f | %.2f |" % (
            r["round"], r["path"], r["portico_us"], r["portico_us_per_login"],
            r["redis_us_per_login"], r["p50_ms"]))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", default="10s", help="portico_load window per path and round")
    ap.add_argument("--login-duration", type=float, default=8.0, help="seconds (<= 30)")
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--mix", default="NOOP:5,SELECT:1,FETCH:3,STATUS:1")
    ap.add_argument("--user-count", type=int, default=20)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--results", default=None, help="write the section into this file")
    args = ap.parse_args()
    assert 0 < args.login_duration <= 30, "each login window is bounded to 30 s"
    if os.geteuid() != 0:
        sys.exit("fleet_cost_bench: run as root (Dovecot test instances need it)")
    load_bin = run_compare.find_load_bin(args.load_bin)
    window = run_compare.duration_seconds(args.duration)
    users = ["user%02d" % i for i in range(args.user_count)]

    started = []
    try:
        backends = []
        for name in ("mbx1", "mbx2"):
            d = harness.Dovecot(name)
            started.append(d)
            d.start()
            backends.append(d)
        redis = RedisServer()
        started.append(redis)
        redis.start()
        workdir = Path(redis.dir)
        map_file = workdir / "users.map"
        map_file.write_text("".join("%s mbx1\n" % u for u in users))
        base = {"workers": 2, "routing": {"map_file": str(map_file)}}
        porticos = {}
        for path, extra in (("off", {}), ("on", {"fleet": {"redis": redis.address,
                                                            "node": "bench-on"}})):
            p = harness.Portico(backends, config=dict(base, **extra))
            started.append(p)
            p.start()
            porticos[path] = p
        redis_pid = redis.proc.pid
        common = ["--sessions", str(args.sessions), "--duration", args.duration,
                  "--mix", args.mix, "--users", "user%02d", "--user-count", str(args.user_count),
                  "--password", harness.PASSWORD, "--json"]
        subprocess.run([load_bin, "--port", str(backends[0].port), "--sessions",
                        str(args.user_count), "--user-count", str(args.user_count),
                        "--password", harness.PASSWORD, "--seed-messages", "20",
                        "--message-size", "2048", "--seed-only"], check=True, timeout=180)
        for p in porticos.values():  # warm-up: Dovecot's login processes forked
            run_window(p.port, 1.0, 2, users)
        rows, idle_busy = [], []
        for i in range(args.rounds):
            idle_busy.append(run_compare.wait_quiet(args.quiet_wait))
            order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
            for path in order:
                p = porticos[path]
                s, _ = measure_commands(load_bin, p, common, window)
                logins = measure_logins(p, redis_pid, args.login_duration, args.clients, users)
                row = dict(s, **logins, round=i + 1, path=path, login_errors=logins["errors"])
                row["errors"] = s["errors"]
                rows.append(row)
                print("fleet_cost_bench: round %d %s: %.1f µs/cmd, %.0f µs/login, LOGIN p50 "
                      "%.2f ms, errors %d+%d" % (i + 1, path, s["portico_us"],
                                                 logins["portico_us_per_login"],
                                                 logins["p50_ms"], s["errors"],
                                                 logins["errors"]), file=sys.stderr, flush=True)
                if not p.running():
                    raise RuntimeError("portico (%s) died\n%s" % (path, p.log_tail(40)))
        meta = {"args": vars(args), "rows": rows, "idle_busy": idle_busy,
                "date": time.strftime("%Y-%m-%d"), "model": run_compare.machine_model(),
                "cores": os.cpu_count() or 0,
                "script": "/usr/bin/python3 bench/fleet_cost_bench.py " + " ".join(
                    shlex.quote(a) for a in sys.argv[1:])}
        section = markdown(meta)
        print(section)
        if args.results:
            run_compare.write_section(Path(args.results), section, HEADING)
        return 0
    finally:
        for thing in reversed(started):
            try:
                thing.cleanup()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print("fleet_cost_bench: stopping %r: %s" % (thing, e), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
