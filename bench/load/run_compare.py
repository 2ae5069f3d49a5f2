#!/usr/bin/python3
"""Proxy core benchmark: the same IMAP load against Dovecot directly and
through Portico, on the same machine in the same run.

Starts two Dovecot backends (mbx1, mbx2) and Portico in front of them with
tests/integration/harness.py. A routing map file pins every load user to
mbx1, so both paths hit the same Dovecot and the same mailboxes: the only
difference between the two runs is Portico in the path. The mailboxes are
seeded once (portico_load --seed-only), then the rounds alternate
direct / through Portico (so drift on a shared machine hits both), each a
fresh portico_load run with the same mix. CPU during each measured window
comes from /proc: Dovecot = both backends' process groups (master, imap,
imap-login, auth ...), Portico = its pid, plus the load tool itself and the
whole machine.

Prints a markdown section (method, machine, table of medians over rounds,
per-round rows) on stdout; --results FILE also writes it into that file,
replacing only a previous section with the same heading. Raw portico_load
JSON goes to --json-out.

Every wait is bounded: each portico_load run hard-stops itself at its
duration + 30 s, and this script kills it at duration + 60 s.

With --baseline-bin another Portico binary (an older build, say) runs
beside this one in front of the same backends, and every round also runs
the load through it: direct, this build and the baseline, the order of the
two Portico runs alternating from round to round. The section then
compares the two builds (heading "%s") instead of writing the direct vs
Portico section.

Run as root (Dovecot needs it), with /usr/bin/python3:
  /usr/bin/python3 bench/load/run_compare.py --sessions 50 --duration 20s
  /usr/bin/python3 bench/load/run_compare.py --baseline-bin /path/to/old/portico
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402

HEADING = "## Proxy core: Dovecot direct vs through Portico"
HEADING_AB = "## Proxy core: this build vs a baseline Portico binary"
HEADING_AB_LOGIN = "## Login cost: this build vs a baseline Portico binary"


def find_load_bin(explicit: str | None) -> str:
    if explicit:
        return explicit
    for cand in (
        os.environ.get("PORTICO_LOAD_BIN", ""),
        str(REPO / "build" / "bench" / "load" / "portico_load"),
        str(REPO / "build-load" / "bench" / "load" / "portico_load"),
    ):
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("run_compare: portico_load not found; build it (cmake --build <dir> --target "
             "portico_load) or pass --load-bin")


def duration_seconds(text: str) -> float:
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for u in ("ms", "s", "m", "h"):
        if text.endswith(u) and text[: -len(u)].replace(".", "", 1).isdigit():
            return float(text[: -len(u)]) * units[u]
    return float(text)


def machine_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_busy_fraction(interval: float = 1.0) -> float:
    def read():
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:9]]
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4]
    b0, i0 = read()
    time.sleep(interval)
    b1, i1 = read()
    total = (b1 - b0) + (i1 - i0)
    return (b1 - b0) / total if total > 0 else 0.0


def wait_quiet(limit_s: float, threshold: float = 0.2) -> float:
    """Waits (at most limit_s) until the machine is under threshold busy;
    returns the last busy fraction seen."""
    deadline = time.monotonic() + limit_s
    busy = machine_busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        print("run_compare: machine %.0f%% busy, waiting for it to calm down" % (100 * busy),
              file=sys.stderr, flush=True)
        time.sleep(4)
        busy = machine_busy_fraction()
    return busy


def run_load(cmd: list, timeout: float) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError("portico_load failed (rc=%d): %s\n%s"
                           % (proc.returncode, " ".join(cmd), proc.stderr[-3000:]))
    report = json.loads(proc.stdout)
    report["_rc"] = proc.returncode
    report["_stderr"] = proc.stderr
    report["_wall_s"] = time.monotonic() - t0
    return report


def cpu_s(entry: dict) -> float | None:
    return entry.get("cpu_s")


def summarize(report: dict, portico_pid: int) -> dict:
    cmds = report["commands"]
    cpu = report["cpu"]
    dovecot = sum(cpu_s(g) or 0.0 for g in cpu["pgids"])
    portico = next((cpu_s(p) for p in cpu["pids"] if p["pid"] == portico_pid), None)
    per = 1e6 / cmds if cmds else float("nan")
    lat = report["latency_us"]
    errors = report["errors"]
    return {
        "commands": cmds,
        "cps": report["commands_per_s"],
        "p50": lat["p50"],
        "p99": lat["p99"],
        "p999": lat["p999"],
        "dovecot_s": dovecot,
        "dovecot_us": dovecot * per,
        "portico_s": portico or 0.0,
        "portico_us": (portico or 0.0) * per,
        "server_us": (dovecot + (portico or 0.0)) * per,
        "load_us": (cpu["load_tool"].get("cpu_s") or 0.0) * per,
        "window_s": report["window_s"],
        "capacity_s": cpu["machine"]["busy_s"] + cpu["machine"]["idle_s"],
        "busy_pct": cpu["machine"]["busy_pct"],
        # Machine busy time not explained by the measured processes: other
        # users of this shared machine (and unattributed kernel work).
        "other_s": cpu["machine"]["busy_s"] - dovecot - (portico or 0.0)
        - (cpu["load_tool"].get("cpu_s") or 0.0),
        "errors": errors["no"] + errors["bad"] + errors["disconnects"] + errors["timeouts"]
        + errors["protocol"],
    }


def summarize_login(report: dict, portico_pid: int) -> dict:
    """A --login-only report (portico_load --login-only) in summarize()'s
    keys, counted per login instead of per command."""
    cpu = report["cpu"]
    portico = next((p for p in cpu["pids"] if p["pid"] == portico_pid), None)
    dovecot_us = sum(g["us_per_login"] for g in cpu["pgids"])
    portico_us = portico["us_per_login"] if portico else 0.0
    lat = report["login_latency_us"]
    return {
        "commands": report["logins"],
        "cps": report["logins_per_s"],
        "p50": lat["p50"],
        "p99": lat["p99"],
        "p999": lat["max"],
        "dovecot_s": sum(g["cpu_s"] for g in cpu["pgids"]),
        "dovecot_us": dovecot_us,
        "portico_s": portico["cpu_s"] if portico else 0.0,
        "portico_us": portico_us,
        "server_us": dovecot_us + portico_us,
        "load_us": cpu["load_tool_us_per_login"],
        "window_s": report["window_s"],
        "capacity_s": 0.0,
        "busy_pct": cpu["machine_busy_pct"],
        "other_s": float("nan"),
        "errors": report["failures"],
    }


def fmt_num(v: float, digits: int = 1) -> str:
    if v is None or v != v:
        return "n/a"
    return "{:,.{d}f}".format(v, d=digits)


def ratio(a: float, b: float) -> str:
    if not b or a is None or b is None:
        return "n/a"
    return "%.2f" % (a / b)


ROWS = [
    # key, label, digits, ratio?, depends on the CPU share the test got?
    ("cps", "commands/s", 0, True, True),
    ("p50", "latency p50 (µs)", 0, True, True),
    ("p99", "latency p99 (µs)", 0, True, True),
    ("p999", "latency p99.9 (µs)", 0, True, True),
    ("dovecot_s", "Dovecot CPU (s, both backends)", 2, True, True),
    ("dovecot_us", "Dovecot CPU µs / command", 1, True, False),
    ("portico_s", "Portico CPU (s)", 2, False, True),
    ("portico_us", "Portico CPU µs / command", 1, False, False),
    ("server_us", "Dovecot + Portico CPU µs / command", 1, True, False),
    ("load_us", "load tool CPU µs / command", 1, True, False),
    ("busy_pct", "machine busy (% of all cores)", 0, True, False),
    ("other_s", "other CPU on the machine (s)", 2, False, False),
    ("errors", "errors (NO/BAD/lost)", 0, False, False),
]


def median_of(rounds: list, key: str) -> float:
    return statistics.median(r[key] for r in rounds)



def commands_block(cmds: dict, paths: list) -> list:
    """The "Commands:" part of a section: the script's own command line and
    the load tool's per path."""
    return ["Commands:", "", "```", cmds["script"], "# each round runs:"] + [cmds[p] for p in paths] + ["```"]

def markdown(meta: dict) -> str:
    """The results section from what a run saved (see --json-out)."""
    if meta.get("baseline"):
        return markdown_ab(meta)
    args = argparse.Namespace(**meta["args"])
    cmds, direct, through = meta["cmds"], meta["direct"], meta["through"]
    portico_info, idle_busy = meta["portico_info"], meta["idle_busy"]
    other = sum(r["other_s"] for r in direct + through)
    capacity = sum(r["capacity_s"] for r in direct + through)
    contended = bool(capacity) and other / capacity > 0.25
    out = [HEADING, ""]
    out.append("Measured by `bench/load/run_compare.py` on %s (%s), %d cores, %s."
               % (meta["date"], meta["model"], meta["cores"],
                  "shared machine: other builds may run at the same time"))
    out.append("")
    out.append("Method: two Dovecot 2.3 backends and Portico (%s) on 127.0.0.1, started "
               "by `tests/integration/harness.py`; a routing map pins every load user to "
               "mbx1, so both paths use the same Dovecot and mailboxes. Mailboxes are "
               "seeded once; then %d round(s) alternate direct / through Portico, each a "
               "fresh `portico_load` run (%d sessions, %s window, mix `%s`, pipeline %d, "
               "%d users). Latency is send → tagged reply as the client sees it. CPU is "
               "what each process used inside the measured window (/proc): Dovecot = the "
               "process groups of both backends, Portico = its pid. Table values are "
               "medians over the rounds; ratio = through Portico / direct."
               % (portico_info, args.rounds, args.sessions, args.duration, args.mix,
                  args.pipeline, args.user_count))
    out.append("")
    out.append("Machine load by others just before each round (1 s sample, %% busy): %s. "
               "The row \"other CPU\" is machine busy time not used by Dovecot, Portico or "
               "the load tool during the window (mostly others' builds, plus kernel softirq "
               "time for loopback networking that /proc charges to no process); when it is "
               "large, read the CPU-per-command rows rather than commands/s."
               % ", ".join("%.0f" % (100 * b) for b in idle_busy))
    out.append("")
    out.extend(commands_block(cmds, ["direct", "through"]))
    out.append("")
    out.append("| metric | Dovecot direct | through Portico | ratio |")
    out.append("|---|---:|---:|---:|")
    for key, label, digits, has_ratio, share_bound in ROWS:
        d = median_of(direct, key)
        t = median_of(through, key)
        if contended and share_bound:
            label += " †"
        out.append("| %s | %s | %s | %s |" % (label, fmt_num(d, digits), fmt_num(t, digits),
                                             ratio(t, d) if has_ratio else "—"))
    out.append("")
    if contended:
        out.append("† **Contended run:** other processes used %.0f%% of the machine during the "
                   "windows (see the last column below), so these rows mostly measure the CPU "
                   "share each run happened to get, not Portico; do not read their ratios as "
                   "Portico's cost. CPU per command is the figure to compare, and even that is "
                   "inflated by cache and scheduler contention. Rerun on a quiet machine for "
                   "absolute numbers." % (100 * other / capacity))
        out.append("")
    pus = median_of(through, "portico_us")
    dus = median_of(direct, "dovecot_us")
    if dus:
        out.append("Portico's CPU per command is %.2f× Dovecot's own CPU per command "
                   "for the same commands (%.1f µs vs %.1f µs)."
                   % (pus / dus, pus, dus))
        out.append("")
    out.append("Per round (latencies in µs):")
    out.append("")
    out.append("| round | path | commands/s | p50 | p99 | p99.9 | Dovecot µs/cmd | Portico µs/cmd "
               "| machine busy % | of it others % |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (d, t) in enumerate(zip(direct, through), 1):
        for name, r in (("direct", d), ("Portico", t)):
            others = 100 * r["other_s"] / r["capacity_s"] if r["capacity_s"] else float("nan")
            out.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                i, name, fmt_num(r["cps"], 0), fmt_num(r["p50"], 0), fmt_num(r["p99"], 0),
                fmt_num(r["p999"], 0), fmt_num(r["dovecot_us"]), fmt_num(r["portico_us"]),
                fmt_num(r["busy_pct"], 0), fmt_num(others, 0)))
    out.append("")
    return "\n".join(out) + "\n"

AB_ROWS = [
    # key, label, digits
    ("portico_us", "Portico CPU µs / command", 1),
    ("cps", "commands/s", 0),
    ("p50", "latency p50 (µs)", 0),
    ("p99", "latency p99 (µs)", 0),
    ("dovecot_us", "Dovecot CPU µs / command", 1),
    ("load_us", "load tool CPU µs / command", 1),
    ("busy_pct", "machine busy (% of all cores)", 0),
    ("errors", "errors (NO/BAD/lost)", 0),
]


def markdown_ab(meta: dict) -> str:
    """This build against --baseline-bin, measured in the same run."""
    args = argparse.Namespace(**meta["args"])
    cmds, direct, through, base = meta["cmds"], meta["direct"], meta["through"], meta["baseline"]
    login_only = getattr(args, "login_only", False)
    out = [HEADING_AB_LOGIN if login_only else HEADING_AB, ""]
    out.append("Measured by `bench/load/run_compare.py --baseline-bin` on %s (%s), %d cores, %s."
               % (meta["date"], meta["model"], meta["cores"],
                  "shared machine: other builds may run at the same time"))
    out.append("")
    out.append("Method: as in \"Proxy core: Dovecot direct vs through Portico\" (%s, same "
               "Dovecot and mailboxes, %d sessions, %s window, mix `%s`, pipeline %d), with "
               "two Portico processes in front of the same backends: this build (`%s`) and "
               "the baseline (`%s`). Each of %d rounds runs the load direct, then through "
               "both Portico builds, alternating which goes first. Values are medians over "
               "the rounds; ratio = this build / baseline."
               % (meta["portico_info"], args.sessions, args.duration, args.mix, args.pipeline,
                  meta["bins"]["portico"], meta["bins"]["baseline"], args.rounds))
    out.append("")
    if login_only:
        out.append("Login only (`portico_load --login-only`): each of the %d clients repeats "
                   "connect, greeting, LOGIN, LOGOUT, close; \"command\" below reads \"login\", "
                   "latency is LOGIN sent → tagged OK, and p99.9 is the maximum."
                   % args.sessions)
        out.append("")
    out.append("Machine load by others just before each round (1 s sample, %% busy): %s."
               % ", ".join("%.0f" % (100 * b) for b in meta["idle_busy"]))
    out.append("")
    out.extend(commands_block(cmds, ["direct", "through", "baseline"]))
    out.append("")
    out.append("| metric | Dovecot direct | baseline Portico | this build | ratio |")
    out.append("|---|---:|---:|---:|---:|")
    for key, label, digits in AB_ROWS:
        if login_only:
            label = label.replace("/ command", "/ login").replace("commands/s", "logins/s")
        d, b, t = median_of(direct, key), median_of(base, key), median_of(through, key)
        out.append("| %s | %s | %s | %s | %s |" % (label, fmt_num(d, digits), fmt_num(b, digits),
                                                  fmt_num(t, digits), ratio(t, b)))
    out.append("")
    out.append("Per round (latencies in µs):")
    out.append("")
    rate, unit = ("logins/s", "login") if login_only else ("commands/s", "cmd")
    out.append("| round | path | %s | p50 | p99 | Dovecot µs/%s | Portico µs/%s "
               "| machine busy %% | of it others %% |" % (rate, unit, unit))
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, (d, t, b) in enumerate(zip(direct, through, base), 1):
        for name, r in (("direct", d), ("baseline", b), ("this build", t)):
            others = 100 * r["other_s"] / r["capacity_s"] if r["capacity_s"] else float("nan")
            out.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                i, name, fmt_num(r["cps"], 0), fmt_num(r["p50"], 0), fmt_num(r["p99"], 0),
                fmt_num(r["dovecot_us"]), fmt_num(r["portico_us"]), fmt_num(r["busy_pct"], 0),
                fmt_num(others, 0)))
    out.append("")
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str, heading: str = HEADING) -> None:
    """Replaces the section under `heading` (up to the next '## ') or appends it.

    Shared by the benchmark scripts in bench/ so each rewrites only its own
    section of bench/RESULTS.md."""
    text = path.read_text() if path.exists() else "# Portico benchmark results\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        if not text.endswith("\n\n"):
            text = text.rstrip("\n") + "\n\n"
        text += section
    else:
        nxt = text.find("\n## ", start + len(heading))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + section + ("\n" if nxt >= 0 else "") + text[end:]
    tmp = path.with_name(path.name + ".%d.tmp" % os.getpid())
    tmp.write_text(text)
    os.replace(tmp, path)


def emit(meta: dict, results: str | None) -> None:
    section = markdown(meta)
    print(section)
    if results:
        heading = HEADING
        if meta.get("baseline"):
            heading = HEADING_AB_LOGIN if meta["args"].get("login_only") else HEADING_AB
        write_section(Path(results), section, heading)
        print("run_compare: wrote section into %s" % results, file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--mix", default="NOOP:5,SELECT:1,FETCH:3,STATUS:1")
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="portico_load event loops")
    ap.add_argument("--user-count", type=int, default=20)
    ap.add_argument("--seed-messages", type=int, default=20)
    ap.add_argument("--message-size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="Portico workers (harness default if unset)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each round wait up to this many seconds for the machine "
                         "to be under 20%% busy (others' builds)")
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--portico-bin", default=None)
    ap.add_argument("--baseline-bin", default=None,
                    help="another Portico binary to run beside --portico-bin in every round "
                         "(writes the build-vs-baseline section)")
    ap.add_argument("--login-only", action="store_true",
                    help="portico_load --login-only: CPU and latency per login (connect, "
                         "LOGIN, LOGOUT) instead of the command mix")
    ap.add_argument("--results", default=None, help="write the markdown section into this file")
    ap.add_argument("--json-out", default=None,
                    help="save the run (summaries, commands, raw portico_load reports) here")
    ap.add_argument("--from-json", default=None,
                    help="only re-render the markdown from a saved --json-out file")
    args = ap.parse_args()

    if args.from_json:
        emit(json.loads(Path(args.from_json).read_text()), args.results)
        return 0

    if os.geteuid() != 0:
        sys.exit("run_compare: run as root (Dovecot test instances need it)")
    load_bin = find_load_bin(args.load_bin)
    portico_bin = args.portico_bin or harness.portico_bin()
    if not os.access(portico_bin, os.X_OK):
        sys.exit("run_compare: Portico binary %s missing; build it or pass --portico-bin" % portico_bin)
    if args.baseline_bin and not os.access(args.baseline_bin, os.X_OK):
        sys.exit("run_compare: baseline binary %s missing" % args.baseline_bin)
    window = duration_seconds(args.duration)
    users = ["user%02d" % i for i in range(args.user_count)]

    backends = []
    portico = None
    baseline = None
    workdir = Path(tempfile.mkdtemp(prefix="portico-compare-"))
    try:
        for name in ("mbx1", "mbx2"):
            d = harness.Dovecot(name)
            backends.append(d)
            d.start()
        map_file = workdir / "users.map"
        map_file.write_text("".join("%s mbx1\n" % u for u in users))
        config = {"routing": {"map_file": str(map_file)}}
        if args.workers is not None:
            config["workers"] = args.workers
        portico = harness.Portico(backends, config=config, binary=portico_bin)
        portico.start()
        if args.baseline_bin:
            baseline = harness.Portico(backends, config=config, binary=args.baseline_bin)
            baseline.start()
        mbx1 = backends[0]
        pgids = [str(d.pid) for d in backends]

        common = [
            "--sessions", str(args.sessions), "--duration", args.duration,
            "--mix", args.mix, "--pipeline", str(args.pipeline),
            "--threads", str(args.threads), "--users", "user%02d",
            "--user-count", str(args.user_count), "--password", harness.PASSWORD,
        ]
        for g in pgids:
            common += ["--pgid", g]
        common += ["--pid", str(portico.pid)]
        if baseline is not None:
            common += ["--pid", str(baseline.pid)]
        common += ["--json"]
        if args.login_only:
            common += ["--login-only"]

        seed = [load_bin, "--port", str(mbx1.port), "--sessions", str(args.user_count),
                "--user-count", str(args.user_count), "--password", harness.PASSWORD,
                "--seed-messages", str(args.seed_messages),
                "--message-size", str(args.message_size), "--seed-only"]
        if not args.login_only:
            subprocess.run(seed, check=True, timeout=180)

        direct_cmd = [load_bin, "--port", str(mbx1.port), "--label", "direct"] + common
        through_cmd = [load_bin, "--port", str(portico.port), "--label", "portico"] + common
        base_cmd = ([load_bin, "--port", str(baseline.port), "--label", "baseline"] + common
                    if baseline is not None else None)
        direct, through, base, raw = [], [], [], []
        idle_busy = []
        for i in range(args.rounds):
            idle_busy.append(wait_quiet(args.quiet_wait))
            runs = [("direct", direct_cmd, direct, None), ("portico", through_cmd, through, portico)]
            if baseline is not None:
                pair = [runs[1], ("baseline", base_cmd, base, baseline)]
                runs = [runs[0]] + (pair if i % 2 == 0 else pair[::-1])
            for name, cmd, sink, proc in runs:
                print("run_compare: round %d/%d %s ..." % (i + 1, args.rounds, name), file=sys.stderr, flush=True)
                report = run_load(cmd, window + 60)
                raw.append(report)
                s = (summarize_login if args.login_only else summarize)(report,
                                                                         (proc or portico).pid)
                sink.append(s)
                print("  %.0f commands/s, p50 %.0f µs, p99 %.0f µs, Dovecot %.1f µs/cmd, "
                      "Portico %.1f µs/cmd, errors %d"
                      % (s["cps"], s["p50"], s["p99"], s["dovecot_us"], s["portico_us"], s["errors"]),
                      file=sys.stderr, flush=True)
                for p in (portico, baseline):
                    if p is not None and not p.running():
                        raise RuntimeError("portico %s died during the run\n%s" % (p.binary, p.log_tail(40)))

        def show(cmd):
            c = list(cmd)
            c[0] = os.path.relpath(c[0], REPO) if c[0].startswith(str(REPO)) else c[0]
            return " ".join(shlex.quote(x) for x in c)

        script = "/usr/bin/python3 bench/load/run_compare.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:])
        cmds = {"script": script, "direct": show(direct_cmd), "through": show(through_cmd)}
        if base_cmd is not None:
            cmds["baseline"] = show(base_cmd)
        workers = args.workers if args.workers is not None else portico.default_config()["workers"]
        meta = {
            "args": {k: v for k, v in vars(args).items() if k != "from_json"},
            "cmds": cmds,
            "portico_info": "%d workers, protocol log off" % workers,
            "idle_busy": idle_busy,
            "date": time.strftime("%Y-%m-%d"),
            "model": machine_model(),
            "cores": os.cpu_count() or 0,
            "direct": direct,
            "through": through,
        }
        if baseline is not None:
            meta["baseline"] = base
            meta["bins"] = {"portico": show([portico_bin])[0:], "baseline": show([args.baseline_bin])}
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(dict(meta, raw=raw), indent=2))
        emit(meta, args.results)
        return 0
    finally:
        if baseline is not None:
            baseline.cleanup()
        if portico is not None:
            portico.cleanup()
        for d in backends:
            d.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
