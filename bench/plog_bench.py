#!/usr/bin/python3
"""Protocol log overhead: the same IMAP load through Portico with the
protocol log off, on for every session, and on for one user only.

Starts two Dovecot backends (mbx1, mbx2) and one Portico (2 workers, the
protocol log directory and the admin socket in a temp dir) once, with
tests/integration/harness.py; a routing map pins every load user to mbx1
(as bench/load/run_compare.py does). Seeds once, directly on mbx1:
INBOX with --messages messages of --message-size bytes per user, and a
mailbox "Big" with one --big-size message per user.

Modes, switched through the admin socket before each run:
  off   `protocol-log off` (the writer thread stays started: a warm-up run
        with the log on comes first, so every "off" run sees the same
        Portico state, an idle writer)
  all   `protocol-log on`
  user  `protocol-log on --user user00` (user00 is one of the load users:
        3 of 50 command-mix sessions, 1 of 10 relay sessions)

Each round runs every mode (in an order rotated by one each round, so
drift on a shared machine spreads over all modes), and each mode runs two
fresh portico_load workloads against Portico:
  mix    --mix-sessions sessions, --mix-duration window, mix --mix on
         INBOX: commands/s and Portico CPU µs per command;
  relay  --relay-sessions sessions, --relay-duration window, FETCHBODY
         (FETCH 1 BODY.PEEK[] of the big message) on "Big": MB/s and
         Portico CPU s per GB relayed (literal bytes = commands x message
         size, 1 MB = 10^6 B).
CPU is what the process used inside the measured window (/proc, via
portico_load --pid/--pgid); the protocol log's writer thread is inside the
Portico process, so its CPU is counted.

After each run the log is switched off, the script waits until the
writer's counters stop moving, and then checks the log: the change in
`protocol-log status` records_written / records_dropped / bytes_written,
and the new rows in the files counted per user (rows must equal
records_written; "off" must add none; "user" must add only user00 rows).

Prints a markdown section on stdout; --results FILE replaces (or appends)
only the "## Protocol log overhead" section of that file. --json-out saves
everything, --from-json re-renders the section from such a file.

Bounds: each portico_load run hard-stops itself at its window + 30 s and is
killed at window + 60 s; every admin request and flush wait is bounded;
no new round starts after --max-runtime seconds.

Run as root (Dovecot needs it), with /usr/bin/python3:
  /usr/bin/python3 bench/plog_bench.py --rounds 3 --results bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "load"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402
import run_compare as rc  # noqa: E402

HEADING = "## Protocol log overhead"
MODES = ("off", "all", "user")
MODE_LABEL = {"off": "log off", "all": "on, all sessions", "user": "on, --user %s"}


def log(msg: str) -> None:
    print("plog_bench: " + msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------
# The protocol log as the files show it


class LogReader:
    """Reads the rows appended to the protocol log files since the last call
    (complete CRLF lines only), counting rows per user."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.offsets: dict = {}  # path -> bytes consumed
        self.fields: dict = {}   # path -> #Fields columns
        self.vanished = 0

    def new_rows(self) -> tuple:
        """-> (rows, Counter user -> rows, Counter command -> rows)."""
        users: collections.Counter = collections.Counter()
        commands: collections.Counter = collections.Counter()
        rows = 0
        for path in harness.protocol_log_files(self.directory):
            off = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(off)
                    data = f.read()
            except FileNotFoundError:
                self.vanished += 1
                continue
            end = data.rfind(b"\r\n")
            if end < 0:
                continue
            data = data[: end + 2]
            self.offsets[path] = off + len(data)
            lines = data.decode("utf-8").split("\r\n")[:-1]
            body = []
            for line in lines:
                if line.startswith("#Fields: "):
                    self.fields[path] = line[len("#Fields: "):].split(",")
                elif not line.startswith("#"):
                    body.append(line)
            if not body:
                continue
            fields = self.fields.get(path)
            if fields is None:
                raise RuntimeError("%s: rows before a #Fields line" % path)
            iu, ic = fields.index("user"), fields.index("command")
            for values in csv.reader(body):
                rows += 1
                users[values[iu]] += 1
                commands[values[ic]] += 1
        return rows, users, commands


def plog_status(portico) -> dict:
    reply = portico.admin("protocol-log status")
    if not reply.get("ok"):
        raise RuntimeError("protocol-log status: %r" % reply)
    return reply["protocol_log"]


def set_mode(portico, mode: str, user: str) -> dict:
    cmd = {"off": "protocol-log off", "all": "protocol-log on",
           "user": ["protocol-log", "on", "--user", user]}[mode]
    reply = portico.admin(cmd)
    if not reply.get("ok"):
        raise RuntimeError("%s: %r" % (cmd, reply))
    st = reply["protocol_log"]
    want_on = mode != "off"
    if st["enabled"] is not want_on or (mode == "user" and st["filters"]["user"] != user) \
            or (mode == "all" and st["filters"]["user"]):
        raise RuntimeError("%s did not take: %r" % (cmd, st))
    return st


def wait_writer_idle(portico, limit: float = 15.0) -> dict:
    """Polls status until the writer's counters have not moved for 0.9 s
    (its tick is 150 ms); returns the last status."""
    deadline = time.monotonic() + limit
    last = plog_status(portico)
    key = lambda s: (s.get("records_written"), s.get("records_dropped"), s.get("bytes_written"))
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.15)
        cur = plog_status(portico)
        if key(cur) != key(last):
            last, stable_since = cur, time.monotonic()
        elif time.monotonic() - stable_since >= 0.9:
            return cur
    raise RuntimeError("protocol log writer still busy after %.0f s: %r" % (limit, last))


def thread_ids(pid: int) -> set:
    return {int(t) for t in os.listdir("/proc/%d/task" % pid)}


def threads_on_cpu_ns(pid: int, tids: set) -> int:
    """Sum of the threads' on-CPU time (ns, /proc/PID/task/TID/schedstat)."""
    total = 0
    for tid in tids:
        try:
            total += int(Path("/proc/%d/task/%d/schedstat" % (pid, tid)).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


# --------------------------------------------------------------------------
# Setup helpers


def create_mailbox(port: int, users: list, mailbox: str) -> None:
    for u in users:
        with harness.ImapConn(port, timeout=10) as c:
            tagged = c.login(u)
            if b" OK" not in tagged:
                raise RuntimeError("LOGIN %s: %r" % (u, tagged))
            tagged, _ = c.command("CREATE %s" % mailbox)
            if b" OK" not in tagged and b"ALREADYEXISTS" not in tagged.upper():
                raise RuntimeError("CREATE %s for %s: %r" % (mailbox, u, tagged))
            c.command("LOGOUT")


def message_size(port: int, user: str, mailbox: str) -> int:
    with harness.ImapConn(port, timeout=10) as c:
        c.login(user)
        c.ok("SELECT %s" % mailbox)
        untagged = c.ok("FETCH 1 (RFC822.SIZE)")
        c.command("LOGOUT")
    for line in untagged:
        m = re.search(rb"RFC822\.SIZE (\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError("no RFC822.SIZE for %s/%s: %r" % (user, mailbox, untagged))


# --------------------------------------------------------------------------
# One measured run


def summarize_relay(report: dict, portico_pid: int, msg_bytes: int) -> dict:
    s = rc.summarize(report, portico_pid)
    relayed = s["commands"] * msg_bytes
    gb = relayed / 1e9
    s["mb_s"] = relayed / 1e6 / report["window_s"] if report["window_s"] else float("nan")
    s["portico_s_gb"] = s["portico_s"] / gb if gb else float("nan")
    s["dovecot_s_gb"] = s["dovecot_s"] / gb if gb else float("nan")
    return s


def measured_run(portico, reader: LogReader, cmd: list, window: float, mode: str, user: str,
                 workload: str, msg_bytes: int, writer_tids: set, sessions: int) -> tuple:
    set_mode(portico, mode, user)
    before = plog_status(portico)
    w0 = threads_on_cpu_ns(portico.pid, writer_tids)
    report = rc.run_load(cmd, window + 60)
    set_mode(portico, "off", user)
    after = wait_writer_idle(portico)
    w1 = threads_on_cpu_ns(portico.pid, writer_tids)
    rows, users, commands = reader.new_rows()
    if workload == "mix":
        s = rc.summarize(report, portico.pid)
    else:
        s = summarize_relay(report, portico.pid, msg_bytes)
    s["records_written"] = after["records_written"] - before["records_written"]
    s["records_dropped"] = after["records_dropped"] - before["records_dropped"]
    s["log_bytes"] = after["bytes_written"] - before["bytes_written"]
    s["rows"] = rows
    s["rows_by_user"] = dict(users)
    s["rows_by_command"] = dict(commands)
    s["sessions_ok"] = report["sessions"]["ok"]
    # The writer thread's CPU over the whole run (setup to drain), which is
    # also what records_written covers.
    s["writer_ms"] = (w1 - w0) / 1e6
    s["writer_ns_per_record"] = (w1 - w0) / s["records_written"] if s["records_written"] else None
    # Sessions in the log that the load tool did not open (other programs
    # on this shared machine connecting to Portico's port).
    s["foreign_sessions"] = max(0, commands.get("Connect", 0) - sessions) if mode == "all" else 0
    problems = []
    if rows != s["records_written"]:
        problems.append("%d rows in the files but records_written +%d" % (rows, s["records_written"]))
    if mode == "off" and (rows or s["records_written"] or s["records_dropped"]):
        problems.append("log off but %d rows / %d records / %d dropped"
                        % (rows, s["records_written"], s["records_dropped"]))
    if mode != "off" and s["records_written"] <= 0:
        problems.append("log on but no records written")
    if mode == "user" and set(users) - {user}:
        problems.append("rows of other users: %s" % sorted(set(users) - {user}))
    if mode == "user" and users.get(user, 0) == 0:
        problems.append("no rows of %s" % user)
    if s["records_dropped"]:
        problems.append("%d records dropped" % s["records_dropped"])
    if s["errors"]:
        problems.append("%d load errors" % s["errors"])
    s["problems"] = problems
    return s, report


# --------------------------------------------------------------------------
# Markdown


def med(runs: list, key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def spread(runs: list, key: str, digits: int) -> str:
    vals = [r[key] for r in runs]
    return "%s–%s" % (rc.fmt_num(min(vals), digits), rc.fmt_num(max(vals), digits))


def overlap(a: list, b: list, key: str) -> bool:
    return max(min(r[key] for r in a), min(r[key] for r in b)) <= \
        min(max(r[key] for r in a), max(r[key] for r in b))


def paired(runs: dict, mode: str, key: str) -> str:
    """Median over rounds of mode/off within the same round, and each round's ratio."""
    off = {r["round"]: r[key] for r in runs["off"]}
    ratios = [r[key] / off[r["round"]] for r in runs[mode] if off.get(r["round"])]
    if not ratios:
        return "n/a"
    return "%.3f (rounds: %s)" % (statistics.median(ratios), ", ".join("%.3f" % x for x in ratios))


def pct(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "n/a"
    return "%+.1f%%" % (100.0 * (a / b - 1.0))


def others_pct(r: dict) -> float:
    # Clamped at 0: small negative values are /proc sampling skew.
    return max(0.0, 100.0 * r["other_s"] / r["capacity_s"]) if r["capacity_s"] else float("nan")


def table(runs: dict, rows: list, user: str) -> list:
    out = ["| metric | log off | on, all sessions | ratio | on, --user %s | ratio |" % user,
           "|---|---:|---:|---:|---:|---:|"]
    for key, label, digits, has_ratio in rows:
        off, on_all, on_user = (med(runs[m], key) for m in MODES)
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            label, rc.fmt_num(off, digits), rc.fmt_num(on_all, digits),
            rc.ratio(on_all, off) if has_ratio else "—", rc.fmt_num(on_user, digits),
            rc.ratio(on_user, off) if has_ratio else "—"))
    return out


MIX_ROWS = [
    ("portico_us", "**Portico CPU µs / command**", 2, True),
    ("cps", "commands/s", 0, True),
    ("p50", "latency p50 (µs)", 0, True),
    ("p99", "latency p99 (µs)", 0, True),
    ("dovecot_us", "Dovecot CPU µs / command", 1, True),
    ("records_written", "log records written (per run)", 0, False),
    ("records_dropped", "log records dropped (per run)", 0, False),
    ("log_bytes", "log bytes written (per run)", 0, False),
    ("writer_ms", "log writer thread CPU (ms per run)", 1, False),
    ("writer_ns_per_record", "log writer thread CPU ns / record", 0, False),
    ("busy_pct", "machine busy (% of all cores)", 0, False),
    ("others_pct", "of it others (% of all cores)", 0, False),
]
RELAY_ROWS = [
    ("portico_s_gb", "**Portico CPU s / GB relayed**", 3, True),
    ("mb_s", "MB/s (literal bytes)", 0, True),
    ("commands", "FETCHes answered in the window", 0, True),
    ("dovecot_s_gb", "Dovecot CPU s / GB", 2, True),
    ("records_written", "log records written (per run)", 0, False),
    ("records_dropped", "log records dropped (per run)", 0, False),
    ("writer_ms", "log writer thread CPU (ms per run)", 1, False),
    ("busy_pct", "machine busy (% of all cores)", 0, False),
    ("others_pct", "of it others (% of all cores)", 0, False),
]


def markdown(meta: dict) -> str:
    a = argparse.Namespace(**meta["args"])
    user = a.trace_user
    mix = {m: [r for r in meta["runs"] if r["mode"] == m and r["workload"] == "mix"] for m in MODES}
    relay = {m: [r for r in meta["runs"] if r["mode"] == m and r["workload"] == "relay"] for m in MODES}
    for r in meta["runs"]:
        r["others_pct"] = others_pct(r)
    out = [HEADING, ""]
    out.append("Measured by `bench/plog_bench.py` on %s. Machine: %s, %d cores (KVM guest, "
               "shared with other sessions' builds and tests). Load average (1/5/15 min) at "
               "start %s, at end %s. Portico: %s build (`%s`), %d workers, at commit %s with "
               "uncommitted changes of concurrent work in the tree."
               % (meta["date"], meta["model"], meta["cores"], meta["loadavg_start"],
                  meta["loadavg_end"], meta["build_type"], meta["portico_bin"], a.workers,
                  meta["commit"]))
    out.append("")
    out.append(
        "Method: two Dovecot 2.3 backends and one Portico, started once by "
        "`tests/integration/harness.py` on 127.0.0.1, every load user pinned to mbx1 by a "
        "routing map; protocol log directory and admin socket in a temp dir. Seeded once: %d "
        "users, INBOX with %d messages of %d B each, mailbox `Big` with one message of %s B each. "
        "Modes, set through the admin socket before each run: **off** (`protocol-log off`; "
        "a warm-up run with the log on came first, so the writer thread exists but idles in "
        "every off run), **all** (`protocol-log on`), **user** (`protocol-log on --user %s`: "
        "%s is 1 of the %d users, i.e. 3 of %d command-mix sessions and 1 of %d relay sessions). "
        "%d rounds; each round runs the three modes in an order rotated by one per round, each "
        "mode a command-mix run (%d sessions, %s window, mix `%s` on INBOX) and a relay run "
        "(%d sessions, %s window, `FETCH 1 BODY.PEEK[]` of the big message). Each run is a "
        "fresh `portico_load` (new sessions: connect, LOGIN and SELECT before the window, "
        "LOGOUT after it). CPU is what each process used inside the measured window "
        "(/proc); Portico's figure includes the log's writer thread. Table values are medians "
        "over the rounds; ratio = mode / off."
        % (a.user_count, a.messages, a.message_size, rc.fmt_num(meta["big_bytes"], 0), user,
           user, a.user_count, a.mix_sessions, a.relay_sessions, a.rounds, a.mix_sessions,
           a.mix_duration, a.mix, a.relay_sessions, a.relay_duration))
    out.append("")
    out.append(
        "Checks after every run (log switched off, writer counters settled): rows added to the "
        "files = `records_written` increase; no rows in off runs; only %s's rows in user runs. "
        "Result: %s."
        % (user, "all passed" if not any(r["problems"] for r in meta["runs"]) else
           "**problems** — " + "; ".join("round %d %s/%s: %s" % (r["round"], r["workload"],
                                                                  r["mode"], ", ".join(r["problems"]))
                                         for r in meta["runs"] if r["problems"])))
    out.append("")
    out.append("Command:")
    out.append("")
    out.append("```")
    out.append(meta["cmds"]["script"])
    out.append("# each mode: admin socket `protocol-log off` | `protocol-log on` | "
               "`protocol-log on --user %s`, then:" % user)
    out.append(meta["cmds"]["mix"])
    out.append(meta["cmds"]["relay"])
    out.append("```")
    out.append("")
    out.append("### Command mix (%d sessions, `%s`)" % (a.mix_sessions, a.mix))
    out.append("")
    out += table(mix, MIX_ROWS, user)
    out.append("")
    out.append("### Relay throughput (%d sessions, FETCH BODY.PEEK[] of %s B)"
               % (a.relay_sessions, rc.fmt_num(meta["big_bytes"], 0)))
    out.append("")
    out += table(relay, RELAY_ROWS, user)
    out.append("")

    # Plain-language summary computed from the medians and the per-round spread.
    off_us, all_us, usr_us = (med(mix[m], "portico_us") for m in MODES)
    rec_all = med(mix["all"], "records_written")
    cmds_all = med(mix["all"], "commands")
    per_rec_ns = (all_us - off_us) * cmds_all / rec_all * 1000 if rec_all else float("nan")
    out.append("Reading it:")
    out.append("")
    out.append("- Command mix, Portico CPU per command (per-run range in brackets): off %.2f µs "
               "(%s), all sessions %.2f µs (%s) = %s, one user %.2f µs (%s) = %s. Paired "
               "within each round (the three modes ran minutes apart at most), all/off = %s "
               "and user/off = %s. With the log on for all sessions the medians differ by "
               "%.0f ns of Portico CPU per log record (%s records per run, %.0f B each)%s."
               % (off_us, spread(mix["off"], "portico_us", 2), all_us,
                  spread(mix["all"], "portico_us", 2), pct(all_us, off_us), usr_us,
                  spread(mix["user"], "portico_us", 2), pct(usr_us, off_us),
                  paired(mix, "all", "portico_us"), paired(mix, "user", "portico_us"), per_rec_ns,
                  rc.fmt_num(rec_all, 0),
                  med(mix["all"], "log_bytes") / rec_all if rec_all else float("nan"),
                  "; the off and all-sessions ranges overlap, so this run cannot separate "
                  "that cost from noise" if overlap(mix["off"], mix["all"], "portico_us") else ""))
    wr = med(mix["all"], "writer_ns_per_record")
    if wr == wr:
        out.append("- The log's writer thread, measured alone (its on-CPU time from "
                   "/proc/PID/task/TID/schedstat over each whole run, / records written): "
                   "%.0f ns per record with the log on for all sessions (per run %s), i.e. "
                   "%.2f µs per command of the mix, %.1f%% of Portico's CPU per command with the "
                   "log off. The rest of the log's cost (formatting the line and copying it into "
                   "the worker's buffer) runs on the worker threads and is inside the "
                   "Portico CPU figure, not separable here. With the log off the idle writer "
                   "used %.1f ms per run (its 150 ms tick); in the one-user runs that and the "
                   "per-batch costs are spread over ~%.0f%% as many records, hence %.0f ns per "
                   "record there (%.1f ms per run in all)."
                   % (wr, spread([r for r in mix["all"] if r.get("writer_ns_per_record")],
                                 "writer_ns_per_record", 0),
                      wr * rec_all / cmds_all / 1000 if cmds_all else float("nan"),
                      100 * wr * rec_all / cmds_all / 1000 / off_us if cmds_all and off_us
                      else float("nan"),
                      med(mix["off"], "writer_ms"),
                      100 * med(mix["user"], "records_written") / rec_all if rec_all else float("nan"),
                      med(mix["user"], "writer_ns_per_record"), med(mix["user"], "writer_ms")))
    off_gb, all_gb, usr_gb = (med(relay[m], "portico_s_gb") for m in MODES)
    out.append("- Relay, Portico CPU per GB: off %.3f s (%s), all %.3f s (%s) = %s, one user "
               "%.3f s (%s) = %s; paired within rounds all/off = %s, user/off = %s. The log "
               "writes one record per command, not per byte: a 1 MiB FETCH costs it one line."
               % (off_gb, spread(relay["off"], "portico_s_gb", 3), all_gb,
                  spread(relay["all"], "portico_s_gb", 3), pct(all_gb, off_gb), usr_gb,
                  spread(relay["user"], "portico_s_gb", 3), pct(usr_gb, off_gb),
                  paired(relay, "all", "portico_s_gb"), paired(relay, "user", "portico_s_gb")))
    others = [r["others_pct"] for r in meta["runs"]]
    out.append("- Noise: other processes used %.0f–%.0f%% of the machine during the windows "
               "(median %.0f%%), and the off runs alone spread over %s µs of Portico CPU per "
               "command (max/min %s): Portico, Dovecot and the load tool share the 2 cores, and "
               "Portico's CPU per command depends on how they were shared (how many events each "
               "wake-up handles), not only on the work done. Compare runs with a similar "
               "\"others %%\" in the per-run table. Throughput and latency mostly measure the "
               "CPU share each run got. Read a difference smaller than the per-run ranges as no "
               "measurable difference."
               % (min(others), max(others), statistics.median(others),
                  spread(mix["off"], "portico_us", 2),
                  rc.ratio(max(r["portico_us"] for r in mix["off"]),
                           min(r["portico_us"] for r in mix["off"]))))
    foreign = sum(r.get("foreign_sessions", 0) for r in meta["runs"])
    if foreign:
        out.append("- %d session(s) in the all-sessions logs were not opened by the load tool "
                   "(a connection without LOGIN, e.g. another program on this shared machine "
                   "trying a loopback port); their few rows are in the counts above."
                   % foreign)
    out.append("")
    out.append("Per run (in the order they ran):")
    out.append("")
    out.append("| round | # | workload | mode | commands/s | MB/s | Portico µs/cmd | Portico s/GB "
               "| records written | dropped | rows by user | others % |")
    out.append("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in meta["runs"]:
        by_user = r["rows_by_user"]
        if not by_user:
            users_txt = "—"
        elif r["mode"] == "user":
            users_txt = ", ".join("%s: %s" % (u or "(none)", rc.fmt_num(n, 0))
                                  for u, n in sorted(by_user.items()))
        else:
            named = {u: n for u, n in by_user.items() if u}
            users_txt = "%d users, %s–%s each" % (len(named), rc.fmt_num(min(named.values()), 0),
                                                  rc.fmt_num(max(named.values()), 0)) if named else ""
            if "" in by_user:
                users_txt += "; no user: %s" % rc.fmt_num(by_user[""], 0)
        relay_run = r["workload"] == "relay"
        out.append("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["round"], r["position"], r["workload"], r["mode"],
            rc.fmt_num(r["cps"], 0), rc.fmt_num(r["mb_s"], 0) if relay_run else "—",
            rc.fmt_num(r["portico_us"], 2), rc.fmt_num(r["portico_s_gb"], 3) if relay_run else "—",
            rc.fmt_num(r["records_written"], 0), rc.fmt_num(r["records_dropped"], 0), users_txt,
            rc.fmt_num(max(0.0, r["others_pct"]), 0)))
    out.append("")
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Rewrites only this script's section of bench/RESULTS.md."""
    rc.write_section(path, section, HEADING)


def emit(meta: dict, results: str | None) -> None:
    section = markdown(meta)
    print(section)
    if results:
        write_section(Path(results), section)
        log("wrote section %r into %s" % (HEADING, results))


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--user-count", type=int, default=20)
    ap.add_argument("--messages", type=int, default=20, help="INBOX messages per user")
    ap.add_argument("--message-size", type=int, default=2048)
    ap.add_argument("--big-size", type=int, default=1 << 20, help="size of the one message in Big")
    ap.add_argument("--mix-sessions", type=int, default=50)
    ap.add_argument("--mix-duration", default="15s")
    ap.add_argument("--mix", default="NOOP:5,SELECT:1,FETCH:3,STATUS:1")
    ap.add_argument("--relay-sessions", type=int, default=10)
    ap.add_argument("--relay-duration", default="10s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trace-user", default="user00")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each round wait up to this long for the machine to be < 20%% busy")
    ap.add_argument("--max-runtime", type=float, default=900.0,
                    help="start no new round after this many seconds")
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--portico-bin", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()

    if args.from_json:
        emit(json.loads(Path(args.from_json).read_text()), args.results)
        return 0
    if os.geteuid() != 0:
        sys.exit("plog_bench: run as root (Dovecot test instances need it)")
    started = time.monotonic()
    load_bin = rc.find_load_bin(args.load_bin)
    portico_bin = os.path.abspath(args.portico_bin or harness.portico_bin())
    if not os.access(portico_bin, os.X_OK):
        sys.exit("plog_bench: Portico binary %s missing" % portico_bin)
    users = ["user%02d" % i for i in range(args.user_count)]
    if args.trace_user not in users[: min(args.relay_sessions, args.mix_sessions)]:
        sys.exit("plog_bench: --trace-user must be one of the first %d load users"
                 % min(args.relay_sessions, args.mix_sessions))
    mix_window = rc.duration_seconds(args.mix_duration)
    relay_window = rc.duration_seconds(args.relay_duration)
    load_start = loadavg()

    backends, portico = [], None
    workdir = Path(tempfile.mkdtemp(prefix="portico-plogbench-"))
    try:
        for name in ("mbx1", "mbx2"):
            d = harness.Dovecot(name)
            backends.append(d)
            d.start()
        mbx1 = backends[0]
        map_file = workdir / "users.map"
        map_file.write_text("".join("%s mbx1\n" % u for u in users))
        plog_dir = workdir / "plog"
        config = {"workers": args.workers,
                  "routing": {"map_file": str(map_file)},
                  "protocol_log": {"enabled": False, "directory": str(plog_dir)}}
        # The harness puts the [admin] socket in Portico's workdir (here
        # inside our temp dir); portico.admin() talks to it.
        portico = harness.Portico(backends, config=config, binary=portico_bin,
                                  workdir=workdir / "portico")
        portico.start()
        log("Dovecot pgids %s, Portico pid %d, protocol log in %s"
            % ([d.pid for d in backends], portico.pid, plog_dir))

        base = [load_bin, "--user-count", str(args.user_count), "--password", harness.PASSWORD]
        t0 = time.monotonic()
        subprocess.run(base + ["--port", str(mbx1.port), "--sessions", str(args.user_count),
                               "--seed-messages", str(args.messages),
                               "--message-size", str(args.message_size), "--seed-only"],
                       check=True, timeout=180)
        create_mailbox(mbx1.port, users, "Big")
        subprocess.run(base + ["--port", str(mbx1.port), "--sessions", str(args.user_count),
                               "--mailbox", "Big", "--seed-messages", "1",
                               "--message-size", str(args.big_size), "--seed-only"],
                       check=True, timeout=180)
        big_bytes = message_size(mbx1.port, args.trace_user, "Big")
        log("seeded in %.1f s; big message %d B" % (time.monotonic() - t0, big_bytes))

        tail = ["--pgid", str(mbx1.pid), "--pgid", str(backends[1].pid),
                "--pid", str(portico.pid), "--json"]
        mix_cmd = [load_bin, "--port", str(portico.port), "--label", "plog-mix",
                   "--sessions", str(args.mix_sessions), "--duration", args.mix_duration,
                   "--mix", args.mix, "--users", "user%02d", "--user-count", str(args.user_count),
                   "--password", harness.PASSWORD] + tail
        relay_cmd = [load_bin, "--port", str(portico.port), "--label", "plog-relay",
                     "--sessions", str(args.relay_sessions), "--duration", args.relay_duration,
                     "--mix", "FETCHBODY:1", "--mailbox", "Big", "--users", "user%02d",
                     "--user-count", str(args.user_count), "--password", harness.PASSWORD] + tail

        def with_duration(cmd, d):
            c = list(cmd)
            c[c.index("--duration") + 1] = d
            return c

        reader = LogReader(plog_dir)
        # Warm-up (not measured): starts the writer thread, warms caches.
        # The threads that appear with the first `protocol-log on` are the
        # log's writer.
        tids_before = thread_ids(portico.pid)
        set_mode(portico, "all", args.trace_user)
        writer_tids = thread_ids(portico.pid) - tids_before
        rc.run_load(with_duration(mix_cmd, "3s"), 3 + 60)
        rc.run_load(with_duration(relay_cmd, "2s"), 2 + 60)
        set_mode(portico, "off", args.trace_user)
        st = wait_writer_idle(portico)
        warm_rows, _, _ = reader.new_rows()
        if not st.get("writer_running") or warm_rows != st["records_written"]:
            raise RuntimeError("warm-up: writer not running or rows %d != records %r"
                               % (warm_rows, st))
        if not writer_tids:
            raise RuntimeError("no writer thread appeared with protocol-log on")
        log("warm-up done: %d records written; writer thread(s) %s"
            % (warm_rows, sorted(writer_tids)))

        runs, raw, idle_busy = [], [], []
        for rnd in range(args.rounds):
            if time.monotonic() - started > args.max_runtime:
                log("--max-runtime reached; stopping after %d rounds" % rnd)
                break
            idle_busy.append(rc.wait_quiet(args.quiet_wait))
            order = MODES[rnd % 3:] + MODES[: rnd % 3]
            position = 0
            for mode in order:
                for workload, cmd, window in (("mix", mix_cmd, mix_window),
                                              ("relay", relay_cmd, relay_window)):
                    position += 1
                    log("round %d/%d #%d %s, log %s ..." % (rnd + 1, args.rounds, position, workload, mode))
                    s, report = measured_run(portico, reader, cmd, window, mode, args.trace_user,
                                             workload, big_bytes, writer_tids,
                                             args.mix_sessions if workload == "mix"
                                             else args.relay_sessions)
                    s.update(round=rnd + 1, position=position, mode=mode, workload=workload)
                    runs.append(s)
                    raw.append(report)
                    log("  %s cmd/s%s, Portico %.2f µs/cmd%s, records %d (dropped %d), others %.0f%%%s"
                        % (rc.fmt_num(s["cps"], 0),
                           ", %.0f MB/s" % s["mb_s"] if workload == "relay" else "",
                           s["portico_us"],
                           ", %.3f s/GB" % s["portico_s_gb"] if workload == "relay" else "",
                           s["records_written"], s["records_dropped"], others_pct(s),
                           "; PROBLEMS: " + "; ".join(s["problems"]) if s["problems"] else ""))
                    if not portico.running():
                        raise RuntimeError("portico died\n" + portico.log_tail(40))

        def show(cmd):
            c = list(cmd)
            c[0] = os.path.relpath(c[0], REPO) if c[0].startswith(str(REPO)) else c[0]
            return " ".join(shlex.quote(x) for x in c)

        try:
            commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            commit = "unknown"
        build_type = "unknown"
        cache = Path(portico_bin).parents[1] / "CMakeCache.txt"
        if cache.exists():
            m = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", cache.read_text(), re.M)
            build_type = m.group(1) if m and m.group(1) else build_type
        meta = {
            "args": {k: v for k, v in vars(args).items() if k != "from_json"},
            "cmds": {"script": "/usr/bin/python3 bench/plog_bench.py " + " ".join(
                         shlex.quote(x) for x in sys.argv[1:]),
                     "mix": show(mix_cmd), "relay": show(relay_cmd)},
            "date": time.strftime("%Y-%m-%d"),
            "model": rc.machine_model(),
            "cores": os.cpu_count() or 0,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "idle_busy": idle_busy,
            "commit": commit,
            "build_type": build_type,
            "portico_bin": os.path.relpath(portico_bin, REPO) if portico_bin.startswith(str(REPO)) else portico_bin,
            "big_bytes": big_bytes,
            "writer_threads": len(writer_tids),
            "runs": runs,
            "wall_s": time.monotonic() - started,
        }
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(dict(meta, raw=raw), indent=2))
        emit(meta, args.results)
        log("done in %.0f s" % (time.monotonic() - started))
        return 0
    finally:
        if portico is not None:
            portico.cleanup()
        for d in backends:
            d.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
