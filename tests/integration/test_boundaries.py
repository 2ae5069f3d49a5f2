"""Hardening at Portico's boundaries (issue 9): what a client or an operator
can send must cost one error answer, never the process, a wedge or a
forged log line.

- any bytes in JSON output (a user name from a LOGIN literal, a raw admin
  line) are served, not fatal;
- the admin socket serves a long pipeline in a loop, caps what may queue on
  one connection, closes idle connections and answers the connection cap;
- user names with CR/LF/ESC cannot forge lines or escapes in the log;
- a missing admin socket directory is created, or named exactly;
- --check-config refuses unverified backends, open secret files and short
  status tokens; the process is not dumpable unless configured.

Real Dovecot backends and real clients on loopback; every wait is bounded.
"""

import base64
import json
import os
import pwd
import re
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import (
    ImapConn,
    PorticoError,
    admin_request,
    free_port,
    portico_bin,
    porticoctl_bin,
    status_of,
    to_toml,
    wait_until,
)


def ctl(portico, *args, timeout=20):
    env = dict(os.environ)
    env.pop("PORTICO_ADMIN_SOCKET", None)
    return subprocess.run([porticoctl_bin(), "--socket", str(portico.admin_socket), *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def read_lines(sock, count, timeout=20.0):
    """Reads until `count` '\\n'-ended lines or EOF; returns (lines, eof)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0, "timed out with %d of %d lines: %r" % (buf.count(b"\n"), count, buf[-300:])
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return buf.split(b"\n")[:-1] if buf.endswith(b"\n") else buf.split(b"\n"), True
        buf += chunk
    return buf.split(b"\n")[:count], False


def read_to_eof(sock, timeout=20.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "connection not closed; have %r" % buf[-300:]
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def admin_connect(portico) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(portico.admin_socket))
    return s


# --------------------------------------------------------------------------
# Defect 1: any bytes in JSON output


def test_invalid_utf8_user_name_then_porticoctl_sessions(portico):
    """A LOGIN literal user name FF FE with a wrong password stays on the
    session; listing sessions used to abort the whole process."""
    c = ImapConn(portico.port)
    c.send(b"a1 LOGIN {2+}\r\n\xff\xfe wrong-password\r\n")
    tagged, _ = c.read_response("a1")
    assert status_of(tagged) == b"NO", tagged

    r = ctl(portico, "sessions")
    assert r.returncode == 0, (r.returncode, r.stderr)
    r = ctl(portico, "--json", "sessions")
    assert r.returncode == 0, (r.returncode, r.stderr)
    mine = [s for s in json.loads(r.stdout)["sessions"]
            if s["client"] == "127.0.0.1:%d" % c.local_port]
    assert len(mine) == 1, r.stdout
    assert mine[0]["user"] == "\ufffd\ufffd", mine  # replaced, not fatal
    # The session is intact: it still answers, and logs in properly.
    tagged, _ = c.command("NOOP")
    assert status_of(tagged) == b"OK", tagged
    assert status_of(c.login("alice")) == b"OK"
    c.close()
    assert portico.running()
    assert portico.admin("stats")["ok"] is True


def test_raw_invalid_utf8_admin_line_gets_an_error_reply(portico):
    s = admin_connect(portico)
    try:
        s.sendall(b"\xff\xfe\n" + b"sessions --user \xff\x80\n" + b"stats\n")
        lines, eof = read_lines(s, 3)
        assert not eof, lines
        first, second, third = (json.loads(l) for l in lines)
        assert first["ok"] is False and first["error"] == "unknown command '\ufffd\ufffd' (try 'help')", first
        assert second["ok"] is True and second["count"] == 0, second
        assert third["ok"] is True and "connections" in third, third
    finally:
        s.close()
    assert portico.running()
    assert portico.admin("help")["ok"] is True


# --------------------------------------------------------------------------
# Defect 2: the admin socket under a pipeline, a flood and idle clients


def test_admin_serves_1000_pipelined_stats_in_order(portico):
    """Each synchronous reply used to recurse into the next request: 1,000
    pipelined lines in one write overflowed the stack."""
    s = admin_connect(portico)
    try:
        requests = b"".join(b"stats\nhelp\n" if i % 50 == 0 else b"stats\n" for i in range(1000))
        count = requests.count(b"\n")
        s.sendall(requests)
        lines, eof = read_lines(s, count, timeout=60)
        assert not eof and len(lines) == count, (eof, len(lines))
        replies = [json.loads(l) for l in lines]
        assert all(r["ok"] is True for r in replies)
        # In request order: every 'help' answer sits right after its stats.
        kinds = ["commands" if "commands" in r else "stats" for r in replies]
        expected = []
        for i in range(1000):
            expected += ["stats", "commands"] if i % 50 == 0 else ["stats"]
        assert kinds == expected
    finally:
        s.close()
    assert portico.running()
    assert portico.admin("stats")["ok"] is True


def test_admin_caps_the_requests_queued_on_one_connection(portico):
    """Requests the workers answer later (sessions) pile up behind each
    other; more than the cap get an error and the connection is closed."""
    s = admin_connect(portico)
    try:
        try:
            s.sendall(b"sessions\n" * 4000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed after its error reply
        data = read_to_eof(s)
    finally:
        s.close()
    lines = data.split(b"\n")
    assert lines[-1] == b"", data[-200:]
    replies = [json.loads(l) for l in lines[:-1]]
    assert replies, "no reply at all"
    last = replies[-1]
    assert last["ok"] is False and re.search(r"more than 1024 requests", last["error"]), last
    assert all(r["ok"] is True for r in replies[:-1]), replies[:-1][-3:]
    assert len(replies) < 1024
    portico.wait_for_line("closing a connection: more than 1024 requests", timeout=5)
    assert portico.admin("stats")["ok"] is True


@pytest.fixture
def short_idle(backends, portico_factory):
    return portico_factory(backends, config={"admin": {"idle_timeout": "1s"}})


def test_admin_idle_connections_are_closed_and_the_cap_answers(short_idle):
    p = short_idle
    held = [admin_connect(p) for _ in range(16)]
    try:
        # Every slot is taken: the next client gets an answer, not silence.
        r = ctl(p, "stats")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert b"too many admin connections (at most 16" in r.stderr, r.stderr
        # The idle ones are told why and closed, so porticoctl works again.
        for s in held:
            data = read_to_eof(s, timeout=10)
            reply = json.loads(data.split(b"\n")[0])
            assert reply["ok"] is False and reply["error"] == "idle for 1s: closing the connection", reply
        assert wait_until(lambda: ctl(p, "stats").returncode == 0, 10)
    finally:
        for s in held:
            s.close()
    # A connection that keeps talking is not idle.
    s = admin_connect(p)
    try:
        for _ in range(4):
            s.sendall(b"help\n")
            lines, eof = read_lines(s, 1)
            assert not eof and json.loads(lines[0])["ok"] is True
            time.sleep(0.5)  # the pause is what is tested: below the 1 s timeout
    finally:
        s.close()
    assert p.running()


# --------------------------------------------------------------------------
# Defect 6: log injection


FORGED = "forged-%d"
FAKE_LINE = b"2030-01-01T00:00:00.000Z INFO [main] "


def assert_no_forged_lines(p, markers):
    raw = Path(p.log_path).read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw and b"\x07" not in raw, \
        [l for l in raw.split(b"\n") if b"\x1b" in l or b"\r" in l][:3]
    for marker in markers:
        hits = [l for l in p.lines() if marker in l]
        assert hits, "no log line names %s" % marker
        for l in hits:
            # Each mention is inside a real line, escaped; none starts one.
            assert not l.startswith("2030-01-01"), l
            assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (INFO|WARN|ERROR|DEBUG) \[", l), l
            assert "\\x0d\\x0a2030-01-01" in l and "\\x1b[2j" in l.lower(), l


def test_user_names_cannot_forge_log_lines(portico):
    ports = []
    # A LOGIN literal.
    user = b"evil-" + (FORGED % 1).encode() + b"\r\n" + FAKE_LINE + b"forged\x1b[2J\x1b]0;owned\x07"
    c = ImapConn(portico.port)
    c.send(b"a1 LOGIN {%d+}\r\n" % len(user) + user + b" wrong-password\r\n")
    tagged, _ = c.read_response("a1")
    assert status_of(tagged) == b"NO", tagged
    ports.append(c.local_port)
    r = ctl(portico, "sessions")  # the table shows it escaped too
    assert r.returncode == 0 and b"\x1b" not in r.stdout and b"\r" not in r.stdout, r
    assert b"\\x1b[2j" in r.stdout.lower(), r.stdout
    c.close()
    # A SASL PLAIN initial response.
    user = b"evil-" + (FORGED % 2).encode() + b"\r\n" + FAKE_LINE + b"forged\x1b[2J"
    c = ImapConn(portico.port)
    payload = base64.b64encode(b"\0" + user + b"\0wrong-password").decode()
    tagged, _ = c.command("AUTHENTICATE PLAIN " + payload)
    assert status_of(tagged) == b"NO", tagged
    ports.append(c.local_port)
    c.close()
    portico.wait_for_session_ends(ports)
    assert_no_forged_lines(portico, [FORGED % 1, FORGED % 2])


# --------------------------------------------------------------------------
# Defect 12: the admin socket's directory


def test_missing_admin_socket_directory_is_created(backends, portico_factory, tmp_path):
    run_dir = tmp_path / "run-portico"  # what /run/portico is on a fresh system
    p = portico_factory(backends, config={"admin": {"socket": str(run_dir / "admin.sock")}})
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
    assert stat.S_ISSOCK((run_dir / "admin.sock").stat().st_mode)
    assert admin_request(run_dir / "admin.sock", "stats")["ok"] is True
    p.wait_for_line("created the admin socket's directory %s (mode 0750)" % run_dir)


def test_missing_admin_socket_parents_are_named(backends, portico_factory, tmp_path):
    missing = tmp_path / "nope" / "portico"
    p = portico_factory(backends, config={"admin": {"socket": str(missing / "admin.sock")}},
                        start=False)
    with pytest.raises(PorticoError):
        p.start(timeout=10)
    text = p.log_text()
    assert ("admin socket %s: directory %s is missing, and so is its parent %s"
            % (missing / "admin.sock", missing, tmp_path / "nope")) in text, text[-2000:]
    assert "permission denied" not in text.lower()
    assert not missing.exists()


# --------------------------------------------------------------------------
# Config and secrets


def check_config(path):
    return subprocess.run([portico_bin(), "--check-config", str(path)], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_check_config_refuses_unverified_backends_open_secrets_and_short_tokens(tmp_path):
    key = tmp_path / "mail.key"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    secret = tmp_path / "probe.pass"
    secret.write_text("pw\n")
    secret.chmod(0o640)
    lines = [
        '[[listen]]',                                       # 1
        'address = "127.0.0.1:%d"' % free_port(),           # 2
        'tls = "implicit"',                                 # 3
        'cert = "%s"' % (tmp_path / "mail.pem"),            # 4
        'key = "%s"' % key,                                 # 5
        '[[backend]]',                                      # 6
        'name = "mbx1"',                                    # 7
        'address = "127.0.0.1:10144"',                      # 8
        'tls = "implicit"',                                 # 9
        'verify = false',                                   # 10
        'probe_user = "hm1"',                               # 11
        'probe_password_file = "%s"' % secret,              # 12
        '[status]',                                         # 13
        'token = "short-token"',                            # 14
    ]
    conf = tmp_path / "portico.toml"
    conf.write_text("\n".join(lines) + "\n")
    r = check_config(conf)
    assert r.returncode == 1, r
    errors = r.stderr.splitlines()
    c = str(conf)
    assert errors == [
        "%s:5: key '%s' is open to group or others (mode 0644); a secret must be its owner's alone: "
        "chmod 600 '%s'" % (c, key, key),
        "%s:10: verify = false without 'pin_sha256' accepts any certificate (a man in the middle would "
        "read every password); set pin_sha256, or verify = true" % c,
        "%s:12: probe_password_file '%s' is open to group or others (mode 0640); a secret must be its "
        "owner's alone: chmod 600 '%s'" % (c, secret, secret),
        "%s:14: 'token' is 11 characters; a bearer token needs at least 16 (e.g. openssl rand -hex 16), "
        "or \"\" for none" % c,
    ], r.stderr
    # Fixed, the same file passes this stage (the fake key then fails to load,
    # which is the next check, not one of these).
    key.chmod(0o600)
    secret.chmod(0o600)
    lines[9] = 'pin_sha256 = "%s"' % ("ab" * 32)
    lines[13] = 'token = "a-token-of-16-chars"'
    conf.write_text("\n".join(lines) + "\n")
    r = check_config(conf)
    assert "open to group" not in r.stderr and "verify = false" not in r.stderr, r.stderr
    assert "'token'" not in r.stderr, r.stderr


def proc_owner(pid) -> int:
    return os.stat("/proc/%d/status" % pid).st_uid


@pytest.mark.parametrize("dumpable", [None, True])
def test_process_is_not_dumpable_unless_configured(dumpable):
    """Run as an unprivileged user: /proc/PID of a non-dumpable process is
    owned by root (no core dump, no ptrace or /proc/PID/mem by the user's
    other processes); with [process] dumpable = true it is the user's."""
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="portico-dumpable-"))
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    cfg = {
        "workers": 1,
        "listen": [{"address": "127.0.0.1:%d" % free_port()}],
        "backend": [{"name": "mbx1", "address": "127.0.0.1:%d" % free_port()}],
        "status": {"listen": "127.0.0.1:%d" % free_port()},
        "admin": {"socket": str(work / "admin.sock")},
        "protocol_log": {"directory": str(work / "log")},
    }
    if dumpable is not None:
        cfg["process"] = {"dumpable": dumpable}
    conf = work / "portico.toml"
    conf.write_text(to_toml(cfg))

    def drop():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    proc = subprocess.Popen([portico_bin(), "--config", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=drop,
                            cwd=str(work))
    try:
        out = b""
        deadline = time.monotonic() + 15
        while b"ready:" not in out:
            left = deadline - time.monotonic()
            assert left > 0, out.decode(errors="replace")
            readable, _, _ = select.select([proc.stderr], [], [], left)
            chunk = os.read(proc.stderr.fileno(), 65536) if readable else b""
            assert chunk or not readable, "portico exited: %s" % out.decode(errors="replace")
            out += chunk
        want = nobody.pw_uid if dumpable else 0
        assert proc_owner(proc.pid) == want
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)
