#!/usr/bin/env python3
"""Sessions at scale (issue 14, item 5): idle memory per session and a
long, mostly idle population of logged-in sessions.

1. Idle memory per pre-login session, plain and implicit TLS 1.3, at each
   --idle-counts (default 1000 and 9000): a fresh Portico per row, Python
   clients connect and read the greeting, then VmRSS before/after / N
   (tls_bench.bench_idle).
2. --sessions logged-in sessions (default 9000) through Portico to a real
   Dovecot, held for --duration (default 5m) by bench/load/portico_load with
   --active-percent of them (default 5) sending the mixed command load with
   --think-time between commands; the rest stay logged in and silent.
   Recorded: setup time, commands, errors, latency, Portico's CPU and RSS
   (before any session, all logged in, at the end, peak) and Dovecot's CPU.
3. From those figures, what 100,000 sessions per node need (fds, memory,
   CPU at a stated command rate), as a paper estimate.

Every run is bounded: the load tool stops itself at --duration (+30 s hard
stop), each idle row closes its sockets, Dovecot and Portico are stopped at
the end. Loopback only.

    /usr/bin/python3 bench/scale_bench.py --results bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench" / "load"))
sys.path.insert(0, str(REPO / "bench"))

from harness import PASSWORD, Dovecot, Portico  # noqa: E402
from tls_certs import TestPki  # noqa: E402

import run_compare as rc  # noqa: E402
import tls_bench as tb  # noqa: E402

HEADING = "## Issue 14: sessions at scale"
USERS = ["user%02d" % i for i in range(20)]


def loadavg() -> list:
    return Path("/proc/loadavg").read_text().split()[:3]


def dovecot_for_many(name: str) -> Dovecot:
    """A Dovecot whose imap processes serve many clients each, so 9,000
    logged-in sessions need about 180 processes rather than 9,000."""
    d = Dovecot(name, users=USERS)
    conf = d.conf_path.read_text()
    old = "service imap {\n  service_count = 100\n  process_limit = 1000\n}"
    if old not in conf:
        raise RuntimeError("harness Dovecot config changed; update scale_bench.dovecot_for_many")
    conf = conf.replace(old, "service imap {\n  service_count = 0\n  client_limit = 50\n"
                             "  process_limit = 1000\n  vsz_limit = 1G\n}")
    d.conf_path.write_text(conf)
    return d


def idle_rows(binary: str, dc: Dovecot, pki: TestPki, counts: list, settle: float) -> dict:
    rows = {}
    for n in counts:
        for kind in ("plain", "TLS 1.3"):
            p, tls_ports = tb.make_portico(binary, [dc], {"ec": pki})
            try:
                if kind == "plain":
                    r = tb.bench_idle(p, p.port, None, n, settle)
                else:
                    r = tb.bench_idle(p, tls_ports["ec"], tb.client_ctx(pki.ca, "1.3"), n, settle)
            finally:
                p.cleanup()
            rows["%s/%d" % (kind, n)] = r
            print("scale_bench: idle %s x%d: %.2f KiB/session" % (kind, n, r["kib_per_session"]),
                  file=sys.stderr)
    return rows


def logged_in_run(args, dc: Dovecot) -> dict:
    p = Portico([dc], binary=args.bin)
    p.config = {
        "limits": {"max_connections": 20000, "max_connections_per_ip": 20000},
        "timeouts": {"prelogin": "10m"},
    }
    p.start()
    try:
        cmd = [rc.find_load_bin(args.load_bin), "--port", str(p.port), "--password", PASSWORD,
               "--sessions", str(args.sessions), "--threads", "1",
               "--active-percent", str(args.active_percent), "--think-time", args.think_time,
               "--duration", args.duration, "--mix", args.mix, "--user-count", str(len(USERS)),
               "--seed-messages", "10", "--setup-concurrency", "64", "--timeout", "30s",
               "--pid", str(p.pid), "--pgid", str(dc.pid), "--json",
               "--label", "%d sessions, %d%% active" % (args.sessions, args.active_percent)]
        print("scale_bench: " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=rc.duration_seconds(args.duration) + 600)
        wall = time.monotonic() - t0
        sys.stderr.write(proc.stderr)
        if proc.returncode not in (0, 1):
            raise RuntimeError("portico_load failed (%d): %s" % (proc.returncode, proc.stderr[-2000:]))
        report = json.loads(proc.stdout)
        report["wall_s"] = wall
        report["exit_code"] = proc.returncode
        report["portico_fds_after"] = p.open_fds() if p.running() else None
        return report
    finally:
        p.cleanup()


def render(args, mach, results) -> str:
    out = [HEADING, ""]
    out.append("Measured by `bench/scale_bench.py` (this section is its output). Command:")
    out += ["", "```", results["command"], "```", ""]
    out.append("Machine: %s, %d cores, %s GiB RAM, Linux %s. Portico build: %s (`%s`), 2 workers. "
               "Load average (1/5/15 min) at start %s, at end %s; the client, Portico and Dovecot "
               "share the same cores, and other work on the machine (compiles) competes with them "
               "when the load average is well above 2." % (
                   mach["cpu"], mach["cores"], mach["mem_gib"], mach["kernel"], results["build"],
                   args.bin, " ".join(results["loadavg_start"]), " ".join(results["loadavg_end"])))
    out.append("")
    out.append("### Idle memory per pre-login session")
    out.append("")
    out.append("A fresh Portico per row; N clients connect (TLS: handshake done) and read the "
               "greeting; VmRSS after 20 warm-up connections and %.0f s of settling, then again "
               "with all N open; difference / N. Certificates: ECDSA P-256." % args.settle)
    out.append("")
    base = results.get("baseline")
    out.append("| sessions | kind | VmRSS before KiB | VmRSS after KiB | KiB per session | %sgoal |"
               % ("baseline KiB per session | " if base else ""))
    out.append("|---:|---|---:|---:|---:|%s---:|" % ("---:|" if base else ""))
    for key, r in results["idle"].items():
        kind, n = key.split("/")
        goal = "≤ 4" if kind == "plain" else "≤ 16"
        before = ""
        if base:
            b = base["idle"].get(key)
            before = ("%.2f | " % b["kib_per_session"]) if b else "— | "
        out.append("| %s | %s | %d | %d | %.2f | %s%s |" % (
            n, kind, r["rss_before_kib"], r["rss_after_kib"], r["kib_per_session"], before, goal))
    out.append("")
    if base:
        out.append("Baseline: %s (the same script's JSON, `--baseline-json`)." % base.get("label", "?"))
        out.append("")
    run = results["run"]
    pid = run["cpu"]["pids"][0]
    dov = run["cpu"]["pgids"][0]
    errs = run["errors"]
    lat = run["latency_us"]
    sessions = run["sessions"]
    n_active = sum(1 for i in range(args.sessions)
                   if (i + 1) * args.active_percent // 100 > i * args.active_percent // 100)
    out.append("### %d logged-in sessions, %d%% active, for %s" % (
        args.sessions, args.active_percent, args.duration))
    out.append("")
    out.append("`portico_load --sessions %d --active-percent %d --think-time %s --duration %s "
               "--mix %s --seed-messages 10`: every session connects, LOGINs and SELECTs through Portico; %d of them "
               "(every %dth) then send one command at a time from the mix with %s between a reply "
               "and the next command; the rest stay logged in and silent for the whole window. "
               "Dovecot's imap processes serve 50 clients each." % (
                   args.sessions, args.active_percent, args.think_time, args.duration, args.mix,
                   n_active, 100 // args.active_percent, args.think_time))
    out.append("")
    rss = pid["rss_kib"]
    rows = [
        ("sessions logged in / lost", "%d / %d" % (sessions["ok"], sessions["lost"])),
        ("errors (disconnects, timeouts, protocol, NO, BAD)", "%d, %d, %d, %d, %d" % (
            errs["disconnects"], errs["timeouts"], errs["protocol"], errs["no"], errs["bad"])),
        ("window", "%.1f s" % run["window_s"]),
        ("commands answered", "%d (%.0f/s)" % (run["commands"], run["commands_per_s"])),
        ("latency p50 / p99 / max", "%.0f / %.0f / %.0f µs" % (lat["p50"], lat["p99"], lat["max"])),
        ("Portico CPU in the window", "%.2f s (%.1f µs/command, %.3f cores)" % (
            pid["cpu_s"], pid["cpu_us_per_command"], pid["cores_busy"])),
        ("Dovecot CPU in the window", "%.2f s (%.1f µs/command)" % (
            dov["cpu_s"], dov["cpu_us_per_command"])),
        ("Portico RSS before any session", "%d KiB" % rss["before_setup"]),
        ("Portico RSS, all logged in", "%d KiB" % rss["window_start"]),
        ("Portico RSS at the end / peak", "%d / %d KiB" % (rss["window_end"], rss["peak"])),
        ("Portico RSS per logged-in session (client + backend connection)",
         "%.2f KiB" % pid.get("rss_kib_per_session", float("nan"))),
        ("machine busy in the window", "%.0f%%" % run["cpu"]["machine"]["busy_pct"]),
    ]
    out.append("| | |")
    out.append("|---|---:|")
    for k, v in rows:
        out.append("| %s | %s |" % (k, v))
    out.append("")
    out += estimate(args, results)
    return "\n".join(out) + "\n"


def estimate(args, results) -> list:
    """100,000 sessions per node, on paper, from the figures above."""
    run = results["run"]
    pid = run["cpu"]["pids"][0]
    per_logged_in = pid.get("rss_kib_per_session", 0.0)
    idle = results["idle"]
    big = max(int(k.split("/")[1]) for k in idle)
    tls_extra = idle["TLS 1.3/%d" % big]["kib_per_session"] - idle["plain/%d" % big]["kib_per_session"]
    us_per_cmd = pid["cpu_us_per_command"]
    n = 100_000
    rate = n * args.active_percent / 100  # one command per active session per second
    out = ["### 100,000 sessions per node, on paper", ""]
    out.append("From the rows above (logged-in sessions hold a client and a backend connection):")
    out.append("")
    out.append("- File descriptors: 2 per logged-in session, so about 200,000 plus a few dozen "
               "(listeners, admin, status, log files): `LimitNOFILE` ≥ 210,000 and "
               "`fs.nr_open` to match; Portico raises its soft limit to the hard one at start and "
               "warns when that is below what `max_connections` needs.")
    out.append("- Memory: %.1f KiB per logged-in plain session → about %.0f MiB for 100,000; "
               "TLS on the client side adds about %.1f KiB per session (the pre-login rows) → "
               "about %.0f MiB more when every client uses TLS." % (
                   per_logged_in, per_logged_in * n / 1024, tls_extra, tls_extra * n / 1024))
    out.append("- CPU: at %d%% of sessions active with one command a second each (%.0f "
               "commands/s), %.1f µs of Portico CPU per command measured above → about %.2f "
               "cores, before TLS (TLS relays cost about twice the CPU per byte, see the TLS "
               "section) and before logins (a full TLS handshake is 0.4 ms: a reconnect storm of "
               "100,000 TLS clients costs about 40 core-seconds)." % (
                   args.active_percent, rate, us_per_cmd, rate * us_per_cmd / 1e6))
    out.append("- Ports: the backend leg needs one local port per session per backend address; "
               "the default ephemeral range (32768-60999, 28,232 ports) caps one backend "
               "address at about 28,000 sessions, so 100,000 sessions need several backend "
               "addresses, a wider `ip_local_port_range`, or several source addresses.")
    out.append("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("PORTICO_BIN", str(REPO / "build" / "proxy" / "portico")))
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--idle-counts", default="1000,9000")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--sessions", type=int, default=9000)
    ap.add_argument("--active-percent", type=int, default=5)
    ap.add_argument("--think-time", default="1s")
    ap.add_argument("--duration", default="5m")
    ap.add_argument("--mix", default="NOOP:5,SELECT:1,FETCH:3,STATUS:1")
    ap.add_argument("--results", default=None, help="write the markdown section into this file")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--baseline-json", default=None,
                    help="an earlier run's --json-out: its idle rows become a baseline column")
    ap.add_argument("--baseline-label", default="an earlier build")
    args = ap.parse_args()
    counts = [int(c) for c in args.idle_counts.split(",") if c]
    if not counts or any(not 1 <= c <= 9500 for c in counts) or not 1 <= args.sessions <= 9500:
        ap.error("session counts are bounded to 1..9500 (the open-file limit is 20,000)")
    if rc.duration_seconds(args.duration) > 1800:
        ap.error("--duration is bounded to 30m")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mach = tb.machine()
    results = {"command": "/usr/bin/python3 bench/scale_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "build": tb.portico_build(args.bin), "loadavg_start": loadavg()}
    cleanup = []
    try:
        pki = TestPki.create(key_type="ec")
        cleanup.append(pki.cleanup)
        dc = dovecot_for_many("scale")
        cleanup.append(dc.cleanup)
        dc.start()
        results["idle"] = idle_rows(args.bin, dc, pki, counts, args.settle)
        results["run"] = logged_in_run(args, dc)
    finally:
        for c in reversed(cleanup):
            c()
    results["loadavg_end"] = loadavg()
    if args.baseline_json:
        results["baseline"] = json.loads(Path(args.baseline_json).read_text())
        results["baseline"]["label"] = args.baseline_label
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    section = render(args, mach, results)
    if args.results:
        rc.write_section(Path(args.results), section, HEADING)
    print(section)
    return 0 if results["run"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
