"""Faults: one test per fault, each with its defined client-visible result.

Real Dovecot wherever it can play the part (a real imap process killed in
the middle of a command); fakes only for what it cannot do: a stall
(slow_relay.SlowRelay) and a backend that never greets
(silent_server.SilentServer). Every test runs with short, configured
timeouts, so each is bounded well under 30 s, and waits for events (log
lines, socket reads with deadlines), never for a fixed time.

What each fault must look like to the client:

backend killed mid-APPEND   `* BYE [UNAVAILABLE] ...` and close, no tagged
                            answer; the message is not in the mailbox.
backend killed mid-IDLE     `* BYE [UNAVAILABLE] ...` and close.
backend stalled             `* BYE <reason>` and close once timeouts.idle
                            has passed since the last byte; meanwhile the
                            command counts as queued (RequestsQueued input).
backend never greets        the login fails over to the next candidate
                            after timeouts.backend_login; with none left,
                            `NO [UNAVAILABLE]` and the session stays usable.
client slowloris            `* BYE <reason>` and close, by the line limit or
                            the pre-login timeout; other clients served.
protocol-log disk full      records dropped and counted, files hold whole
                            lines, Portico and its sessions carry on.
SIGHUP, 200 sessions        every command of every session answered.
SIGTERM mid 20 MiB APPEND   the APPEND completes byte-identical and is
                            followed by `* BYE`; a client that stops
                            sending is closed at timeouts.shutdown and its
                            message is absent. Portico exits in time, rc 0.

fds exhausted               new clients get `* BYE` and close; the refusals
                            are logged rate-limited; service resumes.
backend dies mid-response   the client gets exactly the bytes the backend
                            sent (no `* BYE` inside a message), then EOF; at
                            a response boundary it gets `* BYE`. (A scripted
                            backend: Dovecot cannot die on demand there.)
"""

import imaplib
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness import (
    PASSWORD,
    ImapConn,
    logged_in,
    make_message,
    parse_protocol_log,
    protocol_log_files,
    quote,
    sha256,
    status_of,
    wait_until,
)
from scripted_backend import ScriptedBackend
from silent_server import SilentServer
from slow_relay import SlowRelay


def _marker(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def _imap_process(backends, user, state=None, timeout=5.0):
    """(backend, pid) of the Dovecot imap process serving user, found by its
    title (verbose_proctitle: `imap [user 127.0.0.1 STATE]`); with state,
    waits until the process shows that command."""
    pattern = re.compile(r"/imap \[%s [^ ]+ ?(\w*)" % re.escape(user))
    found = []

    def look():
        found.clear()
        for b in backends:
            for pid in b.group_pids():
                try:
                    title = Path("/proc/%d/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                m = pattern.search(title)
                if m and (state is None or m.group(1) == state):
                    found.append((b, pid))
        return len(found) == 1

    assert wait_until(look, timeout, 0.02), "no single imap process of %s in state %s: %r" % (user, state, found)
    return found[0]


def _read_until_closed(sock, deadline):
    """Everything until EOF/reset or the deadline: (bytes, 'eof'|'reset'|'timeout')."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def _direct(dovecot, user):
    """imaplib straight to a backend (bypassing Portico)."""
    m = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=15)
    typ, data = m.login(user, PASSWORD)
    assert typ == "OK", data
    return m


def _search_direct(dovecot, user, marker):
    m = _direct(dovecot, user)
    try:
        m.select("INBOX")
        typ, data = m.uid("SEARCH", None, "HEADER", "X-Portico-Marker", marker)
        assert typ == "OK", data
        return data[0].split()
    finally:
        m.logout()


# --------------------------------------------------------------------------
# Backend killed in the middle of a command


def test_backend_killed_mid_append(own_backends, portico_factory):
    p = portico_factory(own_backends)
    user = "user71"
    c = logged_in(p.port, user, timeout=5)
    c.ok("SELECT INBOX")
    marker = _marker("kill-append")
    msg = make_message("killed mid-APPEND", body_bytes=2 << 20, marker=marker)
    c.send("k1 APPEND INBOX {%d}\r\n" % len(msg))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg[: len(msg) // 2])
    backend, pid = _imap_process(own_backends, user, state="APPEND")
    os.kill(pid, signal.SIGKILL)
    data, how = _read_until_closed(c.sock, time.monotonic() + 3.0)
    # Exactly one line, Portico's BYE; no tagged answer for the APPEND.
    assert re.fullmatch(rb"\* BYE \[UNAVAILABLE\] [^\r\n]+\r\n", c.buf + data), (c.buf + data, how)
    assert how in ("eof", "reset"), "Portico kept the client after the backend died: %r" % how
    c.close()
    # The half-sent message never reached the mailbox.
    assert backend.messages_with(user, marker) == []
    assert _search_direct(backend, user, marker) == []
    # The backend's master lives on: a new session through Portico works.
    c2 = logged_in(p.port, user)
    c2.ok("SELECT INBOX")
    c2.close()


def test_backend_killed_mid_idle(own_backends, portico_factory):
    p = portico_factory(own_backends)
    user = "user72"
    c = logged_in(p.port, user, timeout=5)
    c.ok("SELECT INBOX")
    c.send("i1 IDLE\r\n")
    assert c.readline().startswith(b"+ "), "no continuation for IDLE"
    _, pid = _imap_process(own_backends, user, state="IDLE")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    data, how = _read_until_closed(c.sock, t0 + 3.0)
    assert re.fullmatch(rb"\* BYE \[UNAVAILABLE\] [^\r\n]+\r\n", c.buf + data), (c.buf + data, how)
    assert how in ("eof", "reset"), how
    assert time.monotonic() - t0 < 2.0
    c.close()


# --------------------------------------------------------------------------
# Backend stalled; backend that never greets


def test_backend_stalled_gets_bye_within_the_idle_timeout(backends, portico_factory):
    idle_s = 2.0
    relay = SlowRelay(("127.0.0.1", backends[0].port)).start()
    try:
        p = portico_factory([], config={
            "backend": [{"name": "stally", "address": relay.address, "weight": 1}],
            "timeouts": {"idle": "%dms" % int(idle_s * 1000)},
        })
        c = logged_in(p.port, "user73", timeout=idle_s + 5)
        c.ok("SELECT INBOX")
        relay.stall()
        sent = time.monotonic()
        c.send("s1 NOOP\r\n")
        # The command is queued at the backend for as long as it stalls:
        # what the RequestsQueued monitor samples.
        assert wait_until(lambda: p.admin("stats")["backends"]["stally"]["queued"] == 1, idle_s / 2), \
            p.admin("stats")
        data, how = _read_until_closed(c.sock, sent + idle_s + 3.0)
        elapsed = time.monotonic() - sent
        assert re.fullmatch(rb"\* BYE [^\r\n]+\r\n", c.buf + data), (c.buf + data, how)
        assert how in ("eof", "reset"), "no close %.1fs after the command (idle %.1fs)" % (elapsed, idle_s)
        assert idle_s - 0.2 <= elapsed <= idle_s + 2.0, elapsed
        ends = p.wait_for_session_ends([c.local_port], timeout=5)
        assert 'reason="idle timeout"' in ends[c.local_port][0], ends
        c.close()
    finally:
        relay.stop()


def test_backend_that_never_greets(backends, portico_factory, tmp_path):
    login_s = 1.0
    timeouts = {"backend_connect": "1s", "backend_login": "%dms" % int(login_s * 1000)}
    with SilentServer() as silent:
        # Alone: the login is refused with UNAVAILABLE, the session stays.
        alone = portico_factory([], config={
            "backend": [{"name": "silent", "address": silent.address, "weight": 1}],
            "timeouts": timeouts,
        })
        c = ImapConn(alone.port, timeout=login_s + 5)
        t0 = time.monotonic()
        tagged, _ = c.command("LOGIN alice %s" % quote(PASSWORD), tag="g1")
        elapsed = time.monotonic() - t0
        assert tagged.startswith(b"g1 NO [UNAVAILABLE]"), tagged
        assert login_s - 0.1 <= elapsed <= login_s + 2.0, elapsed
        tagged, _ = c.command("NOOP", tag="g2")
        assert tagged.startswith(b"g2 OK"), tagged
        c.close()
        alone.wait_for_line(re.compile(r"backend silent failed while BackendGreeting: login timeout"))

        # First of two candidates: the login fails over to Dovecot.
        map_file = tmp_path / "users.map"
        map_file.write_text("alice silent\n")
        pair = portico_factory([backends[0]], config={
            "backend": [{"name": "silent", "address": silent.address, "weight": 1},
                        {"name": backends[0].name, "address": backends[0].address, "weight": 1}],
            "routing": {"map_file": str(map_file), "connect_retries": 1},
            "timeouts": timeouts,
        })
        t0 = time.monotonic()
        c = logged_in(pair.port, "alice", timeout=login_s + 5)
        elapsed = time.monotonic() - t0
        assert login_s - 0.1 <= elapsed <= login_s + 2.0, elapsed
        c.ok("SELECT INBOX")
        c.close()
        pair.wait_for_line(re.compile(r"login user=alice backend=mbx1 "))


# --------------------------------------------------------------------------
# Client slowloris before login


def test_slowloris_prelogin_is_cut_off_and_others_are_served(backends, portico_factory):
    prelogin_s = 2.5
    max_line = 1024  # the smallest Portico accepts
    p = portico_factory(backends, config={
        "timeouts": {"prelogin": "%dms" % int(prelogin_s * 1000)},
        "limits": {"prelogin_max_line": max_line},
    })
    # Two kinds: a fast drip of one endless line, 16 bytes every 5 ms (the
    # line limit ends it), and a slow drip, one byte every 250 ms (the
    # pre-login timeout ends it).
    fast = [ImapConn(p.port, timeout=5) for _ in range(8)]
    slow = [ImapConn(p.port, timeout=5) for _ in range(8)]
    started = time.monotonic()
    result = {}  # conn -> (bytes, how, seconds after start)

    def drip():
        line = b"d1 LOGIN " + b"x" * (4 * max_line)
        plan = [(conn, line, 0.005, 16) for conn in fast] + [(conn, b"d1 NOOP", 0.25, 1) for conn in slow]
        pos = {conn: 0 for conn, _, _, _ in plan}
        due = {conn: started for conn, _, _, _ in plan}
        got = {conn: conn.buf for conn, _, _, _ in plan}
        open_ = {conn.sock: (conn, data, step, n) for conn, data, step, n in plan}
        deadline = started + prelogin_s + 4.0
        while open_ and time.monotonic() < deadline:
            now = time.monotonic()
            for sock, (conn, data, step, n) in list(open_.items()):
                if now >= due[conn]:
                    at = pos[conn] % len(data)
                    try:
                        conn.sock.send(data[at:at + n])
                    except OSError:
                        pass
                    pos[conn] += n
                    due[conn] = now + step
            wake = min(due[c] for c, _, _, _ in open_.values())
            readable, _, _ = select.select(list(open_), [], [], max(0.0, wake - time.monotonic()))
            for sock in readable:
                conn = open_[sock][0]
                try:
                    chunk = sock.recv(65536)
                    how = None if chunk else "eof"
                except ConnectionResetError:
                    chunk, how = b"", "reset"
                got[conn] += chunk
                if how:
                    result[conn] = (got[conn], how, time.monotonic() - started)
                    del open_[sock]
        for conn, _, _, _ in open_.values():
            result[conn] = (got[conn], "timeout", time.monotonic() - started)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        # Meanwhile a real client logs in and works, promptly.
        t0 = time.monotonic()
        c = logged_in(p.port, "user74", timeout=3)
        c.ok("SELECT INBOX")
        c.ok("NOOP")
        tagged, _ = c.command("LOGOUT")
        assert status_of(tagged) == b"OK", tagged
        c.close()
        assert time.monotonic() - t0 < 1.5, "a normal client waited %.1fs" % (time.monotonic() - t0)
        assert time.monotonic() - started < prelogin_s, "served only after the lorises were gone"
    finally:
        t.join(prelogin_s + 6)
    for conn in fast + slow:
        data, how, at = result[conn]
        assert how in ("eof", "reset"), "a slowloris was not cut off: %r" % ((data[-200:], how),)
        assert re.search(rb"(^|\r\n)\* BYE [^\r\n]+\r\n$", data), "no BYE with a reason: %r" % data[-200:]
    for conn in fast:
        assert result[conn][2] < prelogin_s, "the line limit did not end a fast drip: %.2fs" % result[conn][2]
    for conn in slow:
        assert prelogin_s - 0.2 <= result[conn][2] <= prelogin_s + 2.0, result[conn][2]
        conn.close()
    for conn in fast:
        conn.close()


# --------------------------------------------------------------------------
# Protocol log on a full disk


@pytest.mark.tsan
def test_protocol_log_disk_full_drops_and_counts(backends, portico_factory):
    limit = 32 * 1024

    def small_files():
        # The file-size limit stands in for a full disk. SIGXFSZ keeps its
        # default action (Python's subprocess restores it): Portico must
        # ignore it itself, or its first write past the limit kills it.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = portico_factory(backends, preexec=small_files, config={"protocol_log": {"enabled": True}})
    log_dir = p.workdir / "log"
    sessions = [logged_in(p.port, "user%02d" % (75 + i), timeout=10) for i in range(3)]

    def status():
        return p.admin("protocol-log status")["protocol_log"]

    # A few records fit: they are written before the disk "fills".
    for i in range(5):
        sessions[0].ok("NOOP")
    assert wait_until(lambda: status()["records_written"] >= 5, 5.0), status()
    n = 300  # x 3 sessions x ~150 bytes a record: several times the limit
    for c in sessions:
        c.send(b"".join(b"n%03d NOOP\r\n" % i for i in range(n)))
    for c in sessions:
        for i in range(n):
            tagged, _ = c.read_response("n%03d" % i)
            assert status_of(tagged) == b"OK", tagged

    # Every record is accounted for, written or dropped (the writer drains
    # every 150 ms).
    assert wait_until(lambda: status()["records_written"] + status()["records_dropped"] >= 3 * n, 10.0), status()
    s = status()
    assert s["records_dropped"] > 0, s
    assert "too large" in s["last_error"].lower(), s
    p.wait_for_line("protocol log: cannot write")
    # What is on disk is whole records: a write cut by the limit is undone.
    files = protocol_log_files(log_dir)
    assert files and all(f.stat().st_size <= limit for f in files), files
    rows = []
    for f in files:
        headers, file_rows = parse_protocol_log(f.read_bytes())
        assert headers[0].startswith("#Software: Portico")
        rows += file_rows
    assert len(rows) >= 5 and all(r["command"] for r in rows), rows[-3:]
    # Portico and every session carry on.
    for c in sessions:
        c.ok("NOOP")
        tagged, _ = c.command("LOGOUT")
        assert status_of(tagged) == b"OK"
        c.close()
    c = logged_in(p.port, "user79")
    c.ok("SELECT INBOX")
    c.close()
    assert p.running()


# --------------------------------------------------------------------------
# Signals under load


@pytest.mark.tsan
def test_sighup_during_200_active_sessions(backends, portico_factory):
    p = portico_factory(backends)
    n = 200
    reloads = 3
    all_in = threading.Barrier(n + 1)
    stop = threading.Event()
    errors = []
    counts = [0] * n
    lock = threading.Lock()

    def session(i):
        c = None
        try:
            c = logged_in(p.port, "user%02d" % (i % 100), timeout=30)
            c.ok("SELECT INBOX")
            all_in.wait(timeout=60)
            k = 0
            while not stop.is_set():
                c.ok("NOOP" if k % 2 else "STATUS INBOX (MESSAGES)")
                k += 1
                counts[i] = k
            c.ok("NOOP")  # after the last reload
            tagged, _ = c.command("LOGOUT")
            assert status_of(tagged) == b"OK", tagged
        except BaseException as e:  # noqa: BLE001 - reported below
            all_in.abort()
            with lock:
                errors.append("session %d: %r" % (i, e))
        finally:
            if c:
                c.close()

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        all_in.wait(timeout=60)
        for r in range(reloads):
            # A real change each time (routing weights), so the workers take
            # a new snapshot while every session is busy.
            before = list(counts)
            cfg = p.default_config()
            cfg["backend"][0]["weight"] = 1 + r
            p.reload(cfg)
            # Sessions went on working across this reload.
            assert wait_until(lambda: all(c > b for c, b in zip(counts, before)) or errors, 20), \
                "sessions stalled after reload %d" % r
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "sessions still running 60 s after the stop"
    real = [e for e in errors if "BrokenBarrierError" not in e] or errors
    assert not errors, "%d sessions failed, first: %s" % (len(errors), real[:3])
    assert p.count_lines("reload: done") == reloads
    assert p.running()


def test_sigterm_during_20mib_append(own_backends, portico_factory):
    shutdown_s = 4.0
    p = portico_factory(own_backends, config={"timeouts": {"shutdown": "%dms" % int(shutdown_s * 1000)}})
    user_done, user_stuck = "user81", "user82"
    done_marker, stuck_marker = _marker("sigterm-done"), _marker("sigterm-stuck")
    msg = make_message("20 MiB across SIGTERM", body_bytes=15 << 20, marker=done_marker, seed=7)
    assert len(msg) >= 20 << 20
    stuck_msg = make_message("stuck across SIGTERM", body_bytes=15 << 20, marker=stuck_marker, seed=8)

    def start_append(user, message):
        c = logged_in(p.port, user, timeout=shutdown_s + 10)
        c.ok("SELECT INBOX")
        c.send("t1 APPEND INBOX {%d}\r\n" % len(message))
        assert c.readline().startswith(b"+"), "no continuation"
        c.send(message[: 4 << 20])
        return c

    done = start_append(user_done, msg)
    stuck = start_append(user_stuck, stuck_msg)
    _imap_process(own_backends, user_done, state="APPEND")
    since = len(p.lines())
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    p.wait_for_line("shutdown: SIGTERM", since=since, timeout=5)
    # One client goes on sending; the other never sends another byte.
    done.send(msg[4 << 20:] + b"\r\n")
    tagged, _ = done.read_response("t1")
    assert status_of(tagged) == b"OK", tagged
    rest, how = _read_until_closed(done.sock, t0 + shutdown_s + 3)
    assert re.fullmatch(rb"\* BYE [^\r\n]+\r\n", done.buf + rest), (done.buf + rest, how)
    assert how in ("eof", "reset"), how
    data, how = _read_until_closed(stuck.sock, t0 + shutdown_s + 3)
    assert how in ("eof", "reset"), "the stalled APPEND kept Portico past its shutdown bound: %r" % how
    assert not re.search(rb"(^|\n)t1 ", stuck.buf + data), stuck.buf + data
    # If Portico says anything, it is whole protocol lines (a BYE).
    assert re.fullmatch(rb"(\* BYE [^\r\n]+\r\n)?", stuck.buf + data), stuck.buf + data
    try:
        rc = p.proc.wait(timeout=max(0.1, shutdown_s + 2 - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pytest.fail("portico still running %.1fs after SIGTERM (shutdown bound %.0fs)"
                    % (time.monotonic() - t0, shutdown_s))
    assert rc == 0, "exit code %s\n%s" % (rc, p.log_tail())
    done.close()
    stuck.close()
    # The completed message is whole and byte-identical; the cut one is absent.
    found = {}
    for b in own_backends:
        found[b.name] = (_search_direct(b, user_done, done_marker), _search_direct(b, user_stuck, stuck_marker))
    done_where = [(name, uids[0]) for name, (uids, _) in found.items() if uids]
    assert len(done_where) == 1 and len(found[done_where[0][0]][0]) == 1, found
    assert not any(stuck for _, stuck in found.values()), "a truncated APPEND reached the mailbox: %r" % found
    backend = next(b for b in own_backends if b.name == done_where[0][0])
    m = _direct(backend, user_done)
    try:
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", done_where[0][1], "(BODY.PEEK[])")
        assert typ == "OK", data
        assert sha256(data[0][1]) == sha256(msg), "the message in the mailbox differs from the one sent"
    finally:
        m.logout()


# --------------------------------------------------------------------------
# fd exhaustion (defect 11)

FD_LIMIT = 64
EMFILE_LINE = re.compile(r"out of file descriptors \((EMFILE|ENFILE)\b.*refused (\d+) (more )?connections?")
FD_PROBE_SETS = {"ImapProxyTestProbe": "IMAP.Proxy", "ImapCTPProbe": "IMAP",
                 "ImapSelfTestProbe": "IMAP.Protocol", "ImapDeepTestProbe": "IMAP.Protocol"}


def _low_nofile():
    # Runs in Portico's child before exec: soft and hard limit both, so that
    # Portico cannot raise it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _probes_ran_once(status_port) -> bool:
    for probe, health_set in FD_PROBE_SETS.items():
        url = "http://127.0.0.1:%d/probes/%s/%s" % (status_port, health_set, probe)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.loads(r.read().decode())["Targets"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                continue  # not configured (no probe_user)
            raise
        if not targets or any(not t["Results"] for t in targets):
            return False
    return True


def _refused_counts(p) -> list:
    return [int(m.group(2)) for m in (EMFILE_LINE.search(l) for l in p.lines()) if m]


def _greeting_or_bye(port) -> tuple:
    c = ImapConn(port, read_greeting=False, timeout=10)
    return c, c.readline()


def test_fd_exhaustion_answers_bye_logs_rate_limited_and_recovers(portico_factory, backends):
    p = portico_factory([backends[0]], start=False, preexec=_low_nofile)
    # Probes once an hour: their first run (within 5 s of start) is awaited
    # below, so no probe connection competes for descriptors in the test.
    p.config = {"workers": 1,
                "health": {"probe": {n: {"interval": "1h"} for n in FD_PROBE_SETS}}}
    p.start()
    # At start: the limit could not be raised and is far below what the
    # default max_connections (10000) needs.
    warn = [l for l in p.lines() if "open-file limit %d (hard %d) is below" % (FD_LIMIT, FD_LIMIT) in l]
    assert warn and "max_connections = 10000" in warn[0], p.log_tail()
    assert wait_until(lambda: _probes_ran_once(p.status_port), 20.0, 0.1), "probes did not run"

    clients = []
    try:
        # Fill the descriptor table with pre-login sessions (one fd each).
        bye = None
        for _ in range(FD_LIMIT + 8):
            c, line = _greeting_or_bye(p.port)
            if line.startswith(b"* OK"):
                clients.append(c)
                continue
            bye = line
            data, how = c.read_until_closed(timeout=5)
            c.close()
            assert how == "eof" and data == b"", (data, how)
            break
        assert bye is not None, "no refusal after %d connections with a limit of %d" % (len(clients), FD_LIMIT)
        assert bye.startswith(b"* BYE [UNAVAILABLE] "), bye
        assert len(clients) >= 10, "only %d sessions fit under %d descriptors" % (len(clients), FD_LIMIT)

        # A burst of further clients: every one gets the BYE, and the log
        # gets at most one line a second, each with its count.
        burst = 5
        t0 = time.monotonic()
        for _ in range(burst):
            c, line = _greeting_or_bye(p.port)
            c.close()
            assert line.startswith(b"* BYE [UNAVAILABLE] "), line
        took = time.monotonic() - t0
        refused = burst + 1
        assert wait_until(lambda: sum(_refused_counts(p)) >= refused, 5.0), (_refused_counts(p), p.log_tail())
        counts = _refused_counts(p)
        assert sum(counts) == refused, counts
        assert counts[0] == 1, counts  # the first refusal is reported at once
        assert len(counts) <= 2 + int(took), (counts, took)
        assert all("EMFILE" in l for l in p.lines() if EMFILE_LINE.search(l))

        # The sessions that did fit are still served.
        assert clients[0].command("NOOP", tag="n1")[0].startswith(b"n1 OK")
    finally:
        for c in clients:
            c.close()

    # Descriptors back: new clients are served normally again, end to end.
    def served() -> bool:
        try:
            with ImapConn(p.port, timeout=5) as c:
                if not c.greeting.startswith(b"* OK"):
                    return False
                assert c.login("alice", PASSWORD).startswith(b"a001 OK")
                c.ok("SELECT INBOX")
                c.ok("LOGOUT")
                return True
        except (EOFError, OSError):
            return False

    assert wait_until(served, 10.0, 0.1), p.log_tail()
    # Several at once, as many as fit before.
    again = []
    try:
        for _ in range(10):
            c, line = _greeting_or_bye(p.port)
            again.append(c)
            assert line.startswith(b"* OK"), line
    finally:
        for c in again:
            c.close()
    assert sum(_refused_counts(p)) == refused, _refused_counts(p)


# --------------------------------------------------------------------------
# backend dies part-way through a response (defect 8)

LITERAL_HEAD = b"* 1 FETCH (UID 7 BODY[] {1000}\r\n"
PARTIAL_BODY = b"Subject: cut short\r\n\r\n" + b"x" * 378  # 400 of the announced 1000


def backend_dies_after(sent: bytes):
    """on_command for ScriptedBackend: FETCH gets `sent`, then the backend dies."""

    def on_command(conn, tag, line):
        if b" FETCH " in line.upper():
            conn.sendall(sent)
            return False
        conn.sendall(b"%s OK done\r\n" % tag.encode())
        return True

    return on_command


def fetch_until_backend_dies(portico_factory, sent: bytes):
    with ScriptedBackend(backend_dies_after(sent)) as fake:
        p = portico_factory([], config={"backend": [{"name": "fake", "address": fake.address,
                                                     "weight": 1}]})
        c = ImapConn(p.port)
        try:
            assert c.login("alice").startswith(b"a001 OK")
            assert c.command("SELECT INBOX")[0].startswith(b"a002 OK")
            c.send("a003 UID FETCH 7 BODY[]\r\n")
            data, how = c.read_until_closed(timeout=10)
        finally:
            c.close()
        p.wait_for_line("session end", timeout=10)
        return p, data, how


@pytest.mark.parametrize("sent", [LITERAL_HEAD + PARTIAL_BODY, LITERAL_HEAD,
                                  b"* 1 FETCH (UID 7 FLAGS (\\Seen"],
                         ids=["mid-literal", "literal-announced", "mid-line"])
def test_backend_dies_mid_response_client_gets_exact_bytes_then_eof(portico_factory, sent):
    # The message in flight must not gain a `* BYE` in its body: the client
    # sees exactly what the backend sent, then the connection ends.
    p, data, how = fetch_until_backend_dies(portico_factory, sent)
    assert data == sent, "client got %r" % data[-200:]
    assert how in ("eof", "reset"), how
    assert p.wait_for_line(re.compile(r"in the middle of a response"), timeout=5)


def test_backend_dies_between_responses_client_gets_bye(portico_factory):
    # The control case: at a response boundary the BYE is still said.
    sent = b"* 1 FETCH (UID 7 FLAGS (\\Seen))\r\n"
    p, data, how = fetch_until_backend_dies(portico_factory, sent)
    assert data == sent + b"* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n", data
    assert how in ("eof", "reset"), how
    assert not any("in the middle of a response" in l for l in p.lines())
