"""Integration tests of Portico's admin socket and of porticoctl.

The socket is driven directly (harness.admin_request: one line out, one
JSON line back) and through the porticoctl binary (PORTICOCTL_BIN, default
build/proxy/porticoctl). Real Dovecot backends, real IMAP clients; every
read is bounded.
"""

import grp
import json
import os
import re
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

from harness import (
    ImapConn,
    admin_request,
    logged_in,
    make_message,
    porticoctl_bin,
    status_of,
    wait_until,
)


# --------------------------------------------------------------------------
# helpers


def new_marker(prefix="adm"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def ok(portico, command) -> dict:
    reply = portico.admin(command)
    assert reply.get("ok") is True, "%r -> %r" % (command, reply)
    return reply


def refused(portico, command, pattern) -> str:
    reply = portico.admin(command)
    assert reply.get("ok") is False, "%r should fail: %r" % (command, reply)
    assert re.search(pattern, reply.get("error", "")), "%r -> error %r, want /%s/" % (
        command, reply.get("error"), pattern)
    return reply["error"]


def session_of(portico, conn) -> dict:
    """The admin socket's entry for an ImapConn's session."""
    sessions = ok(portico, "sessions")["sessions"]
    mine = [s for s in sessions if s["client"] == "127.0.0.1:%d" % conn.local_port]
    assert len(mine) == 1, sessions
    return mine[0]


def backend_of_user(portico, user) -> str:
    c = logged_in(portico, user)
    try:
        return session_of(portico, c)["backend"]
    finally:
        c.close()


def users_by_backend(portico, users=("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")) -> dict:
    out: dict = {}
    for u in users:
        out.setdefault(backend_of_user(portico, u), []).append(u)
    return out


def other(name):
    return "mbx2" if name == "mbx1" else "mbx1"


def by_name(backends, name):
    return next(b for b in backends if b.name == name)


def stored_intact(dovecot, user, marker, msg) -> bool:
    files = dovecot.messages_with(user, marker)
    if len(files) != 1:
        return False
    data = files[0].read_bytes()
    # Dovecot may store maildir files with LF line ends.
    return data in (msg, msg.replace(b"\r\n", b"\n"))


def append_marker(portico, user, marker) -> str:
    """Logs in, appends a small message with marker; returns the session's backend."""
    c = logged_in(portico, user)
    backend = session_of(portico, c)["backend"]
    tagged = c.append(make_message("admin routing", marker=marker))
    assert status_of(tagged) == b"OK", tagged
    c.ok("LOGOUT")
    c.close()
    return backend


def ctl(portico, *args, env=None, timeout=20):
    e = dict(os.environ)
    e.pop("PORTICO_ADMIN_SOCKET", None)
    if env:
        e.update(env)
    return subprocess.run([porticoctl_bin(), "--socket", str(portico.admin_socket), *args], env=e,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def need_porticoctl():
    if not os.access(porticoctl_bin(), os.X_OK):
        pytest.fail("porticoctl binary %s is missing (build the porticoctl target or set PORTICOCTL_BIN)"
                    % porticoctl_bin())


# --------------------------------------------------------------------------
# the socket itself


def test_socket_mode_owner_and_group(backends, portico, portico_factory):
    st = os.stat(portico.admin_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.getuid()
    # With a configured group: 0660 and that group.
    p = portico_factory(backends, config={"admin": {"group": "nogroup"}})
    st = os.stat(p.admin_socket)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid


def test_every_command_normal_and_error(portico):
    help_reply = ok(portico, "help")
    listed = " ".join(help_reply["commands"])
    for word in ("protocol-log", "health", "probe", "backend", "sessions", "kick", "stats", "reload"):
        assert word in listed, help_reply
    refused(portico, "frobnicate now", r"unknown command 'frobnicate'.*help")
    refused(portico, '"unterminated', r"unterminated quote")

    status = ok(portico, "protocol-log status")["protocol_log"]
    assert status["enabled"] is False and status["ttl_left_seconds"] is None, status
    refused(portico, "protocol-log", r"usage: protocol-log")
    refused(portico, "protocol-log maybe", r"expected on, off or status")
    refused(portico, "protocol-log on --ttl 15", r"bad --ttl '15'")
    refused(portico, "protocol-log on --ttl soon", r"bad --ttl 'soon'")
    refused(portico, "protocol-log on --ttl 0s", r"bad --ttl")
    refused(portico, "protocol-log on --ip 10.0.0.0/33", r"bad --ip '10.0.0.0/33'")
    refused(portico, "protocol-log on --ip not-an-ip", r"bad --ip")
    refused(portico, "protocol-log on --user", r"--user needs a value")
    refused(portico, "protocol-log on --colour red", r"unknown option --colour")
    assert ok(portico, "protocol-log status")["protocol_log"]["enabled"] is False, "a refused `on` switched it on"
    on = ok(portico, "protocol-log on --ip 127.0.0.0/8 --ttl 10m")["protocol_log"]
    assert on["enabled"] is True and on["filters"]["ip"] == "127.0.0.0/8", on
    assert 590 <= on["ttl_left_seconds"] <= 600 and on["expires"].endswith("Z"), on
    assert ok(portico, "protocol-log off")["protocol_log"]["enabled"] is False

    health = ok(portico, "health")["health"]
    names = {(m["Name"], m["TargetResource"]) for m in health["Monitors"]}
    assert ("ImapSelfTestMonitor", "mbx1") in names and ("ImapSelfTestMonitor", "mbx2") in names, names
    only = ok(portico, "health IMAP.Protocol")["health"]["Monitors"]
    assert only and {m["HealthSetName"] for m in only} == {"IMAP.Protocol"}, only
    assert ok(portico, "health NoSuchSet*")["health"]["Monitors"] == []
    refused(portico, "health a b", r"usage: health")

    refused(portico, "probe", r"usage: probe")
    refused(portico, "probe ImapSelfTestProbe", r"expected SET\\PROBE")
    refused(portico, r'probe "IMAP.Protocol\\NoSuchProbe" mbx1', r"no probe IMAP.Protocol\\NoSuchProbe")
    refused(portico, ["probe", "IMAP.Protocol\\ImapSelfTestProbe", "mbx9"], r"for target mbx9")

    listed = ok(portico, "backend list")["backends"]
    assert [(b["name"], b["state"]) for b in listed] == [("mbx1", "enabled"), ("mbx2", "enabled")], listed
    refused(portico, "backend", r"usage: backend list")
    refused(portico, "backend reboot mbx1", r"usage: backend list")
    refused(portico, "backend drain nosuch", r"no backend named 'nosuch'")
    refused(portico, "backend enable nosuch", r"no backend named 'nosuch'")
    refused(portico, "backend drain", r"usage: backend drain NAME")
    refused(portico, "backend drain mbx1 mbx2", r"usage: backend drain NAME")
    refused(portico, "backend enable mbx1 --move-sessions", r"--move-sessions goes with drain")
    refused(portico, "backend drain mbx1 --force", r"unknown option --force")

    assert [s for s in ok(portico, "sessions")["sessions"] if s["user"]] == []
    refused(portico, "sessions alice", r"unexpected 'alice'")
    refused(portico, "sessions --user", r"--user needs a value")

    refused(portico, "kick", r"usage: kick")
    refused(portico, "kick 0123456789abcdef", r"no matching session")
    refused(portico, "kick not-hex", r"not a session id")
    refused(portico, "kick 0123456789abcdef0", r"not a session id")
    refused(portico, "kick --user nobody-here", r"no matching session")

    stats = ok(portico, "stats")
    assert stats["workers"] == 2 and stats["connections_rejected"] == 0, stats
    for key in ("connections", "connections_total", "bytes_from_clients", "bytes_to_clients", "backends"):
        assert key in stats, stats
    # Every configured backend is listed, also before it has seen traffic.
    assert sorted(stats["backends"]) == ["mbx1", "mbx2"], stats
    assert all(b["sessions"] == 0 and b["commands"] == {} for b in stats["backends"].values()), stats
    assert ok(portico, "reload")["reloaded"] is True


def test_two_clients_pipelining_and_long_line(portico):
    path = str(portico.admin_socket)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.settimeout(10)
    first.connect(path)
    try:
        # A second client is served while the first one is connected.
        assert admin_request(path, "stats")["ok"] is True
        # The first one too, and two pipelined requests come back in order.
        first.sendall(b"protocol-log status\nbackend list\n")
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = first.recv(65536)
            assert chunk, "connection closed after %r" % buf
            buf += chunk
        replies = [json.loads(l) for l in buf.split(b"\n")[:2]]
        assert "protocol_log" in replies[0] and "backends" in replies[1], replies
        assert admin_request(path, "help")["ok"] is True
    finally:
        first.close()

    # A 1 MiB line: an error reply, then the connection is closed.
    big = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    big.settimeout(10)
    big.connect(path)
    try:
        try:
            big.sendall(b"sessions --user " + b"x" * (1 << 20) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading once the line passed its limit
        data, how = b"", None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = big.recv(65536)
            except ConnectionResetError:
                how = "reset"
                break
            if not chunk:
                how = "eof"
                break
            data += chunk
        assert how in ("eof", "reset"), "connection not closed after an over-long line"
    finally:
        big.close()
    reply = json.loads(data.split(b"\n")[0])
    assert reply["ok"] is False and re.search(r"longer than \d+ bytes", reply["error"]), reply
    # The socket still serves new clients.
    assert admin_request(path, "sessions")["ok"] is True

    # The limit is 64 KiB per line, wherever the reads happen to split it.
    assert admin_request(path, ["sessions", "--user", "y" * 60000])["ok"] is True
    for n in (66000, 70000, 79000):
        reply = admin_request(path, ["sessions", "--user", "y" * n])
        assert reply["ok"] is False and "longer than 65536 bytes" in reply["error"], (n, reply)


def half_closed_exchange(path, data: bytes) -> bytes:
    """Sends data, shuts down the write side (as `socat`/`nc -N` do), reads to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_half_closed_client_gets_its_answers(portico):
    path = str(portico.admin_socket)
    c = logged_in(portico, "alice")
    # Commands answered at once and ones the workers answer later.
    for request in (b"stats\n", b"sessions --user alice\n", b"kick --user nobody-here\n", b"sessions"):
        out = half_closed_exchange(path, request)
        assert out.endswith(b"\n") and out.count(b"\n") == 1, (request, out)
        reply = json.loads(out)
        assert "ok" in reply, reply
        if request.startswith(b"sessions"):
            assert reply["count"] == 1 and reply["sessions"][0]["user"] == "alice", reply
    out = half_closed_exchange(path, b"help\nsessions\nbackend list\n")
    replies = [json.loads(l) for l in out.splitlines()]
    assert [("commands" in r, "sessions" in r, "backends" in r) for r in replies] == [
        (True, False, False), (False, True, False), (False, False, True)], replies
    c.close()


# --------------------------------------------------------------------------
# sessions, kick, stats


def test_sessions_and_kick(portico):
    alice = logged_in(portico, "alice")
    alice.ok("SELECT INBOX")
    alice.send("i1 IDLE\r\n")
    assert alice.readline().startswith(b"+"), "no IDLE continuation"
    bobs = [logged_in(portico, "bob") for _ in range(2)]
    carol = logged_in(portico, "carol")

    listed = ok(portico, ["sessions", "--user", "alice"])
    assert listed["count"] == 1, listed
    s = listed["sessions"][0]
    assert re.fullmatch(r"[0-9a-f]{16}", s["id"]), s
    assert s["client"] == "127.0.0.1:%d" % alice.local_port, s
    assert s["user"] == "alice" and s["backend"] in ("mbx1", "mbx2"), s
    assert s["state"] == "Relay" and s["command"] == "IDLE" and s["commands_in_flight"] == 1, s
    assert s["bytes_in"] > 0 and s["bytes_out"] > 0 and s["age_ms"] >= 0, s
    assert ok(portico, "sessions --user ALICE")["count"] == 1, "user filter should match case-insensitively"
    ours = {"127.0.0.1:%d" % c.local_port for c in [alice, carol] + bobs}

    def our_sessions(command="sessions"):
        return [x for x in ok(portico, command)["sessions"] if x["client"] in ours]

    assert len(our_sessions("sessions --ip 127.0.0.1")) == 4
    assert ok(portico, "sessions --ip 10.9.9.9")["count"] == 0
    on_backend = ok(portico, ["sessions", "--backend", s["backend"]])["sessions"]
    assert s["id"] in {x["id"] for x in on_backend} and {x["backend"] for x in on_backend} == {s["backend"]}
    assert len(our_sessions()) == 4

    # kick <id>: that session ends with BYE; the others stay.
    assert ok(portico, ["kick", s["id"]])["kicked"] == 1
    data, how = alice.read_until_closed(5.0)
    assert b"* BYE" in data and how in ("eof", "reset"), (data, how)
    portico.wait_for_line(re.compile(r"id=%s kicked by operator" % s["id"]))
    # kick --user bob: both of bob's sessions.
    assert ok(portico, "kick --user bob")["kicked"] == 2
    for b in bobs:
        data, how = b.read_until_closed(5.0)
        assert b"* BYE" in data and how in ("eof", "reset"), (data, how)
    assert wait_until(lambda: len(our_sessions()) == 1, 5.0), ok(portico, "sessions")
    assert our_sessions()[0]["user"] == "carol"
    carol.ok("NOOP")
    carol.close()


def test_stats_counts_commands(portico):
    # A command answered BAD before login is counted and shown.
    bad_before = ok(portico, "stats")["prelogin_bad_commands"]
    pre = ImapConn(portico.port)
    tagged, _ = pre.command("FROB")
    assert status_of(tagged) == b"BAD", tagged
    pre.close()
    assert ok(portico, "stats")["prelogin_bad_commands"] == bad_before + 1
    c = logged_in(portico, "dave")
    backend = session_of(portico, c)["backend"]
    before = ok(portico, "stats")["backends"].get(backend, {}).get("commands", {}).get("NOOP", {}).get("count", 0)
    for _ in range(7):
        c.ok("NOOP")
    tagged, _ = c.command("FROB")
    assert status_of(tagged) == b"BAD", tagged
    stats = ok(portico, "stats")
    b = stats["backends"][backend]
    assert b["commands"]["NOOP"]["count"] - before >= 7, b
    assert b["sessions"] == 1 and b["sessions_total"] >= 1, b
    assert stats["connections"] >= 1 and stats["bytes_from_clients"] > 0 and stats["bytes_to_clients"] > 0, stats
    c.ok("LOGOUT")
    c.close()


# --------------------------------------------------------------------------
# reload


def test_reload_valid_and_broken(portico):
    since = len(portico.lines())
    assert ok(portico, "reload")["reloaded"] is True
    portico.wait_for_line("reload: done", since=since)

    good = portico.config_path.read_text()
    lines = good.splitlines()
    lines.insert(len(lines), "colour_of_the_bikeshed = \"green\"")
    portico.config_path.write_text("\n".join(lines) + "\n")
    error = refused(portico, "reload", r"^reload refused: ")
    assert re.search(r"%s:%d: .*colour_of_the_bikeshed" % (re.escape(str(portico.config_path)), len(lines)),
                     error), error
    # The running configuration stays and serves.
    c = logged_in(portico, "alice")
    c.ok("NOOP")
    c.close()
    portico.config_path.write_text(good)
    assert ok(portico, "reload")["reloaded"] is True


# --------------------------------------------------------------------------
# drain and enable


def test_drain_and_enable_route_new_logins(backends, portico):
    user = "grace"
    home = backend_of_user(portico, user)
    drained = ok(portico, ["backend", "drain", home])
    assert drained["backend"] == home and drained["drained_by_operator"] is True
    states = {b["name"]: b for b in ok(portico, "backend list")["backends"]}
    assert states[home]["state"] == "drained-by-operator" and states[home]["drained_by_operator"] is True, states
    assert states[other(home)]["state"] == "enabled", states

    marker = new_marker("drained")
    assert append_marker(portico, user, marker) == other(home)
    assert by_name(backends, other(home)).messages_with(user, marker), "not stored on the other backend"
    assert not by_name(backends, home).messages_with(user, marker), "stored on the drained backend"

    enabled = ok(portico, ["backend", "enable", home])
    assert enabled["drained_by_operator"] is False
    assert {b["name"]: b["state"] for b in ok(portico, "backend list")["backends"]}[home] == "enabled"
    marker = new_marker("enabled")
    assert append_marker(portico, user, marker) == home
    assert by_name(backends, home).messages_with(user, marker), "not back on the enabled backend"


def test_drain_move_sessions_waits_for_a_running_append(backends, portico):
    user = "heidi"
    idle = logged_in(portico, user, timeout=30)
    idle.ok("SELECT INBOX")
    home = session_of(portico, idle)["backend"]
    bystander_user = next(u for u in ("alice", "bob", "carol", "dave", "erin", "frank")
                          if backend_of_user(portico, u) == other(home))
    bystander = logged_in(portico, bystander_user)
    loader = logged_in(portico, user, timeout=60)
    assert session_of(portico, loader)["backend"] == home

    marker = new_marker("moving")
    msg = make_message("move sessions", body_bytes=15 * 1024 * 1024, marker=marker)
    assert len(msg) >= 20 * 1024 * 1024
    chunk = 1 << 20
    half_sent = threading.Event()
    go_on = threading.Event()
    result = {}

    def append():
        try:
            loader.send("A1 APPEND INBOX {%d}\r\n" % len(msg))
            cont = loader.readline()
            assert cont.startswith(b"+"), cont
            for off in range(0, len(msg), chunk):
                if off >= len(msg) // 2 and not half_sent.is_set():
                    half_sent.set()
                    assert go_on.wait(20), "the test never said go on"
                loader.send(msg[off:off + chunk])
            loader.send(b"\r\n")
            result["data"], result["how"] = loader.read_until_closed(30.0)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e
        finally:
            half_sent.set()

    t = threading.Thread(target=append, name="slow-append", daemon=True)
    t.start()
    try:
        assert half_sent.wait(20), "the APPEND never got half way"
        assert "error" not in result, result
        # Mid-literal: drain the backend and move its sessions.
        reply = ok(portico, ["backend", "drain", home, "--move-sessions"])
        assert reply["drained_by_operator"] is True
        # The idle session gets its BYE at once.
        data, how = idle.read_until_closed(5.0)
        assert b"* BYE [UNAVAILABLE]" in data and how in ("eof", "reset"), (data, how)
        # A session on the other backend is left alone.
        bystander.ok("NOOP")
    finally:
        go_on.set()
        t.join(60)
    assert not t.is_alive(), "the APPEND thread hung"
    assert "error" not in result, result
    data = result["data"]
    ok_at = data.find(b"A1 OK")
    bye_at = data.find(b"* BYE [UNAVAILABLE]")
    assert ok_at >= 0, "the APPEND did not complete with OK: %r" % data[:500]
    assert bye_at > ok_at, "BYE before the APPEND's tagged OK: %r" % data[:500]
    assert result["how"] in ("eof", "reset"), result["how"]
    assert stored_intact(by_name(backends, home), user, marker, msg), "the 20 MiB message is not intact"
    # New logins of that user now land on the other backend.
    assert backend_of_user(portico, user) == other(home)
    bystander.ok("LOGOUT")
    bystander.close()


# --------------------------------------------------------------------------
# probe


def test_probe_on_demand(portico):
    reply = ok(portico, ["probe", "IMAP.Protocol\\ImapSelfTestProbe", "mbx1"])
    assert reply["ResultType"] == "Succeeded", reply
    assert reply["Probe"] == "ImapSelfTestProbe" and reply["HealthSet"] == "IMAP.Protocol", reply
    assert reply["TargetResource"] == "mbx1" and reply["Error"] == "" and reply["Trace"], reply
    # The quoted and the bare spelling of the backslash reach the same probe.
    assert ok(portico, r"probe IMAP.Protocol\ImapSelfTestProbe mbx2")["TargetResource"] == "mbx2"


# --------------------------------------------------------------------------
# porticoctl


def test_porticoctl(portico, tmp_path):
    need_porticoctl()
    c = logged_in(portico, "alice")
    c.ok("NOOP")
    sid = session_of(portico, c)["id"]

    r = ctl(portico, "sessions")
    assert r.returncode == 0, r
    header = r.stdout.splitlines()[0].split()
    assert header[:5] == ["ID", "USER", "CLIENT", "BACKEND", "STATE"], r.stdout
    row = next(l for l in r.stdout.splitlines() if sid in l)
    assert "alice" in row and "127.0.0.1:%d" % c.local_port in row and "Relay" in row, r.stdout
    # The count line ends the table; a health probe may hold a session of
    # its own at this moment, so the count is checked for alice's alone.
    assert re.search(r"^\d+ sessions?$", r.stdout, re.M), r.stdout
    assert "1 session\n" in ctl(portico, "sessions", "--user", "alice").stdout
    # Columns are aligned: every row's CLIENT column starts where the header's does.
    col = r.stdout.splitlines()[0].index("CLIENT")
    assert row[col:].startswith("127.0.0.1:"), r.stdout
    j = json.loads(ctl(portico, "--json", "sessions", "--user", "alice").stdout)
    assert j["ok"] is True and [s["id"] for s in j["sessions"]] == [sid]
    assert json.loads(ctl(portico, "sessions", "--user", "nobody", "--json").stdout)["count"] == 0

    r = ctl(portico, "health")
    assert r.returncode == 0, r
    assert r.stdout.count("\n") >= 3
    head = next(l for l in r.stdout.splitlines() if l.startswith("Name"))
    assert head.split() == ["Name", "TargetResource", "HealthSetName", "AlertValue", "LastTransitionTime"], r.stdout
    assert re.search(r"ImapSelfTestMonitor\s+mbx1\s+IMAP\.Protocol\s+\w+", r.stdout), r.stdout
    assert "Monitors" in json.loads(ctl(portico, "--json", "health", "IMAP.*").stdout)["health"]

    r = ctl(portico, "backend", "list")
    assert r.returncode == 0, r
    assert r.stdout.split()[:2] == ["NAME", "STATE"], r.stdout
    assert re.search(r"^mbx1\s+enabled\s", r.stdout, re.M) and re.search(r"^mbx2\s+enabled\s", r.stdout, re.M), r.stdout
    assert len(json.loads(ctl(portico, "--json", "backend", "list").stdout)["backends"]) == 2

    r = ctl(portico, "protocol-log", "status")
    assert r.returncode == 0 and "enabled: false" in r.stdout.splitlines(), r
    r = ctl(portico, "protocol-log", "on", "--user", "alice", "--ttl", "10m")
    assert r.returncode == 0 and "enabled: true" in r.stdout and "filter user: alice" in r.stdout, r
    assert json.loads(ctl(portico, "protocol-log", "status", "--json").stdout)["protocol_log"]["enabled"] is True
    assert ctl(portico, "protocol-log", "off").returncode == 0
    assert portico.admin("protocol-log status")["protocol_log"]["enabled"] is False

    r = ctl(portico, "stats")
    assert r.returncode == 0 and re.search(r"^connections: [1-9]", r.stdout, re.M), r
    assert re.search(r"^backend mbx\d: sessions [1-9]", r.stdout, re.M) and re.search(r"NOOP\s+\d+", r.stdout), r
    assert re.search(r"^prelogin bad commands: \d+$", r.stdout, re.M), r
    r = ctl(portico, "probe", "IMAP.Protocol\\ImapSelfTestProbe", "mbx1")
    assert r.returncode == 0 and "ResultType: Succeeded" in r.stdout, r
    r = ctl(portico, "commands")
    assert r.returncode == 0 and "protocol-log" in r.stdout, r

    # ok:false -> 1, the error on stderr.
    r = ctl(portico, "backend", "drain", "nosuch")
    assert r.returncode == 1 and "no backend named 'nosuch'" in r.stderr and r.stdout == "", r
    r = ctl(portico, "protocol-log", "on", "--ttl", "whenever")
    assert r.returncode == 1 and "bad --ttl" in r.stderr, r
    r = ctl(portico, "--json", "kick", "0123456789abcdef")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False, r
    # Words with quotes and spaces reach the socket intact.
    r = ctl(portico, "kick", "--user", 'a "quoted" user')
    assert r.returncode == 1 and "no matching session" in r.stderr, r

    # kick through porticoctl.
    r = ctl(portico, "kick", sid)
    assert r.returncode == 0 and "kicked 1 session" in r.stdout, r
    data, _ = c.read_until_closed(5.0)
    assert b"* BYE" in data

    # The socket from the environment.
    r = subprocess.run([porticoctl_bin(), "backend", "list"], capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PORTICO_ADMIN_SOCKET=str(portico.admin_socket)))
    assert r.returncode == 0 and "mbx1" in r.stdout, r

    # No socket, usage errors, timeouts -> 2.
    missing = tmp_path / "no" / "admin.sock"
    r = subprocess.run([porticoctl_bin(), "--socket", str(missing), "sessions"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2, r
    assert "cannot connect to %s: No such file or directory (is Portico running? --socket?)" % missing in r.stderr, r
    for args in ([], ["frobnicate"], ["backend"], ["backend", "drain"], ["kick"], ["--timeout", "soon", "stats"]):
        r = ctl(portico, *args)
        assert r.returncode == 2, (args, r)
    silent_path = tmp_path / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(silent_path))
    silent.listen(4)  # accepts (in the kernel) and never answers
    try:
        started = time.monotonic()
        r = subprocess.run([porticoctl_bin(), "--socket", str(silent_path), "--timeout", "300ms", "stats"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and "no reply from %s within 300ms" % silent_path in r.stderr, r
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_monitor_override_disable_repairing_enable(portico):
    """An operator can disable a monitor or mark it Repairing, and clear it."""

    def alert(name, target):
        monitors = ok(portico, "health")["health"]["Monitors"]
        for m in monitors:
            if m["Name"] == name and (m.get("TargetResource") or "") == target:
                return m["AlertValue"]
        raise AssertionError("no monitor %s/%s in %r" % (name, target, monitors))

    ok(portico, "monitor disable ImapSelfTestMonitor mbx1")
    assert alert("ImapSelfTestMonitor", "mbx1") == "Disabled"
    assert alert("ImapSelfTestMonitor", "mbx2") != "Disabled"
    ok(portico, "monitor repairing ImapSelfTestMonitor mbx2")
    assert alert("ImapSelfTestMonitor", "mbx2") == "Repairing"
    ok(portico, "monitor enable ImapSelfTestMonitor mbx1")
    ok(portico, "monitor enable ImapSelfTestMonitor mbx2")
    assert alert("ImapSelfTestMonitor", "mbx1") not in ("Disabled", "Repairing")
    assert alert("ImapSelfTestMonitor", "mbx2") not in ("Disabled", "Repairing")
    refused(portico, "monitor disable NoSuchMonitor mbx1", "no monitor")
    refused(portico, "monitor mute ImapSelfTestMonitor mbx1", "expected disable")
