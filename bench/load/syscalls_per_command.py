#!/usr/bin/python3
"""Syscalls, context switches and CPU per command of one Portico binary
under the mixed load: the figures behind issue 14 item 2 in RESULTS.md.

Starts Dovecot mbx1/mbx2 and Portico (tests/integration/harness.py, every
load user pinned to mbx1), seeds the mailboxes, then runs one bounded
portico_load window through Portico, either under `strace -c -f` attached
to Portico (--strace: counts per syscall; strace slows Portico, so its CPU
figures are not the real ones) or plain (CPU and context switches from
/proc). Counts include the ~1 s before the window and the sessions' setup,
which is why a few per-connection calls (accept4, setsockopt) show up as
fractions per command.

Run as root, with /usr/bin/python3:
  /usr/bin/python3 bench/load/syscalls_per_command.py --portico-bin build/proxy/portico \
      --load-bin build/bench/load/portico_load --strace
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402



def all_traced_by(pid: int, tracer: int) -> bool:
    """Whether every thread of `pid` has `tracer` as its TracerPid."""
    for task in Path("/proc/%d/task" % pid).iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        traced = next((l.split()[1] for l in status.splitlines() if l.startswith("TracerPid:")), "0")
        if int(traced) != tracer:
            return False
    return True

def cpu_ticks(pid: int) -> tuple:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (clock ticks)


def ctx_switches(pid: int) -> tuple:
    vol = invol = 0
    for task in os.listdir("/proc/%d/task" % pid):
        for line in Path("/proc/%d/task/%s/status" % (pid, task)).read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol += int(line.split()[1])
    return vol, invol


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--portico-bin", required=True)
    ap.add_argument("--load-bin", required=True)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--mix", default="NOOP:5,SELECT:1,FETCH:3,STATUS:1")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--strace", action="store_true", help="count syscalls with strace -c -f")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("syscalls_per_command: run as root (Dovecot test instances need it)")
    users = ["user%02d" % i for i in range(20)]
    backends, portico, tracer = [], None, None
    workdir = Path(tempfile.mkdtemp(prefix="portico-syscalls-"))
    try:
        for name in ("mbx1", "mbx2"):
            d = harness.Dovecot(name)
            backends.append(d)
            d.start()
        (workdir / "users.map").write_text("".join("%s mbx1\n" % u for u in users))
        portico = harness.Portico(backends, binary=args.portico_bin, config={
            "workers": args.workers, "routing": {"map_file": str(workdir / "users.map")}})
        portico.start()
        subprocess.run([args.load_bin, "--port", str(backends[0].port), "--sessions", "20",
                        "--user-count", "20", "--password", harness.PASSWORD,
                        "--seed-messages", "20", "--seed-only"],
                       check=True, timeout=180, capture_output=True)
        trace_out = workdir / "strace.txt"
        if args.strace:
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(trace_out), "-p", str(portico.pid)],
                                      stderr=subprocess.DEVNULL)
            # Start the load only once strace is attached to every thread.
            deadline = time.monotonic() + 10
            while not all_traced_by(portico.pid, tracer.pid):
                if time.monotonic() > deadline or tracer.poll() is not None:
                    raise SystemExit("strace did not attach to every thread of Portico")
                time.sleep(0.01)
        t0, c0 = cpu_ticks(portico.pid), ctx_switches(portico.pid)
        load = subprocess.run([args.load_bin, "--port", str(portico.port), "--sessions", str(args.sessions),
                               "--duration", args.duration, "--mix", args.mix, "--user-count", "20",
                               "--password", harness.PASSWORD, "--pid", str(portico.pid), "--json"],
                              capture_output=True, text=True, timeout=300)
        t1, c1 = cpu_ticks(portico.pid), ctx_switches(portico.pid)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        report = json.loads(load.stdout)
        cmds = report["commands"]
        cpu = next(p["cpu_s"] for p in report["cpu"]["pids"] if p["pid"] == portico.pid)
        hz = os.sysconf("SC_CLK_TCK")
        print("%s: %d commands in the window (%.0f/s), errors %s" % (
            args.portico_bin, cmds, report["commands_per_s"], report["errors"]))
        print("Portico CPU in the window: %.1f µs/command%s" % (
            cpu * 1e6 / cmds, " (slowed by strace)" if args.strace else ""))
        if not args.strace:  # strace's own stops count as context switches
            print("whole run: user %.2f s, system %.2f s, context switches %.2f voluntary and %.2f "
                  "involuntary per command" % ((t1[0] - t0[0]) / hz, (t1[1] - t0[1]) / hz,
                                               (c1[0] - c0[0]) / cmds, (c1[1] - c0[1]) / cmds))
        if args.strace:
            total = 0
            print("| syscall | calls | per command |")
            print("|---|---:|---:|")
            for line in trace_out.read_text().splitlines():
                f = line.split()
                if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                    calls = int(f[3])
                    total += calls
                    print("| %s | %d | %.3f |" % (f[-1], calls, calls / cmds))
            print("| all | %d | %.3f |" % (total, total / cmds))
        return 0
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
        if portico is not None:
            portico.cleanup()
        for d in backends:
            d.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
