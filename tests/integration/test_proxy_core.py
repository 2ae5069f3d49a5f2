"""Integration tests of Portico's proxy core against real Dovecot backends.

Each test talks to a real Portico process (PORTICO_BIN) with real clients:
imaplib, raw sockets where imaplib cannot express the case, and curl.
Every socket read has a timeout, so a silent proxy fails a test instead of
hanging the suite.
"""

import imaplib
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest

from harness import (
    PASSWORD,
    ImapConn,
    logged_in,
    make_message,
    plain_b64,
    quote,
    sha256,
    status_of,
    wait_until,
    which_backend,
)

WRONG_PASSWORD = "not-the-PW-987"


# --------------------------------------------------------------------------
# helpers


def new_marker(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:16])


def imap(portico, user=None, timeout=30):
    m = imaplib.IMAP4("127.0.0.1", portico.port, timeout=timeout)
    if user:
        typ, data = m.login(user, PASSWORD)
        assert typ == "OK", data
    return m


def caps_in(line: bytes) -> set:
    """Capability atoms from `* CAPABILITY ...` or a `[CAPABILITY ...]` code."""
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line) or re.match(rb"\* CAPABILITY (.*)\r\n", line)
    return set(m.group(1).upper().split()) if m else set()


def exists_count(lines) -> int:
    for l in lines:
        m = re.match(rb"\* (\d+) EXISTS", l)
        if m:
            return int(m.group(1))
    raise AssertionError("no EXISTS in %r" % lines)


def append_via(portico, user, marker):
    m = imap(portico, user)
    typ, data = m.append("INBOX", None, None, make_message("routing", marker=marker))
    assert typ == "OK", data
    m.logout()


def backend_of(backends, user, marker):
    where = which_backend(backends, user, marker)
    assert len(where) == 1, "message %s of %s found on %r (want exactly one backend)" % (marker, user, where)
    return where[0]


def by_name(backends, name):
    return next(b for b in backends if b.name == name)


# --------------------------------------------------------------------------
# 1. greeting and capabilities


def test_greeting_and_prelogin_capability(portico):
    c = ImapConn(portico.port)
    assert c.greeting.startswith(b"* OK [CAPABILITY "), c.greeting
    greet_caps = caps_in(c.greeting)
    assert b"IMAP4REV1" in greet_caps, c.greeting
    assert b"COMPRESS=DEFLATE" not in greet_caps, c.greeting
    untagged = c.ok("CAPABILITY")
    cap_lines = [l for l in untagged if l.startswith(b"* CAPABILITY ")]
    assert len(cap_lines) == 1, untagged
    caps = caps_in(cap_lines[0])
    assert b"IMAP4REV1" in caps, cap_lines
    assert b"AUTH=PLAIN" in caps, cap_lines
    assert b"COMPRESS=DEFLATE" not in caps, cap_lines
    c.close()


def test_capability_after_login_offers_portico_compress_once(backends, portico):
    # Sanity: the backend itself offers COMPRESS=DEFLATE after login.
    direct = imaplib.IMAP4("127.0.0.1", backends[0].port, timeout=10)
    direct.login("alice", PASSWORD)
    assert b"COMPRESS=DEFLATE" in direct.capability()[1][0].split()
    direct.logout()

    # Portico terminates COMPRESS itself (test_compress.py): the client sees
    # its COMPRESS=DEFLATE once, in place of the backend's.
    c = ImapConn(portico.port)
    tagged = c.login("alice")
    assert status_of(tagged) == b"OK", tagged
    assert len(re.findall(rb"COMPRESS=", tagged, re.I)) == 1 and b"COMPRESS=DEFLATE" in caps_in(tagged), tagged
    untagged = c.ok("CAPABILITY")
    cap_lines = [l for l in untagged if l.startswith(b"* CAPABILITY ")]
    assert len(cap_lines) == 1, untagged
    caps = caps_in(cap_lines[0])
    assert b"IMAP4REV1" in caps and b"UIDPLUS" in caps, "not the backend's post-login list: %r" % cap_lines
    assert len(re.findall(rb"COMPRESS=", cap_lines[0], re.I)) == 1 and b"COMPRESS=DEFLATE" in caps, cap_lines
    c.close()


def test_compress_with_an_unknown_mechanism_is_refused(portico):
    c = logged_in(portico, "alice")
    tagged, untagged = c.command("COMPRESS ZSTD", tag="z1")
    assert tagged.startswith(b"z1 BAD"), (tagged, untagged)
    # The session must still speak plain IMAP afterwards.
    tagged, _ = c.command("NOOP", tag="z2")
    assert tagged.startswith(b"z2 OK"), tagged
    c.close()


# --------------------------------------------------------------------------
# 2. large message


def test_10mib_append_fetch_byte_identical(portico):
    msg = make_message("ten MiB", body_bytes=10 * 1024 * 1024 * 3 // 4, marker=new_marker("big"))
    assert len(msg) >= 10 * 1024 * 1024
    m = imap(portico, "dave", timeout=60)
    typ, data = m.append("INBOX", None, None, msg)
    assert typ == "OK", data
    mm = re.search(rb"APPENDUID \d+ (\d+)", data[0])
    assert mm, data
    typ, _ = m.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = m.uid("FETCH", mm.group(1).decode(), "(BODY.PEEK[])")
    assert typ == "OK", data
    body = data[0][1]
    assert len(body) == len(msg)
    assert sha256(body) == sha256(msg)
    m.logout()


# --------------------------------------------------------------------------
# 3. routing


def test_routing_is_sticky_per_user(backends, portico):
    marker = new_marker("sticky")
    for _ in range(3):
        append_via(portico, "erin", marker)
    counts = {b.name: len(b.messages_with("erin", marker)) for b in backends}
    assert sorted(counts.values()) == [0, 3], "erin's 3 messages spread over backends: %r" % counts


def test_routing_uses_both_backends(backends, portico):
    marker = new_marker("spread")
    users = ["user%02d" % i for i in range(20)]
    placed = {}
    for u in users:
        append_via(portico, u, marker)
        placed[u] = backend_of(backends, u, marker)
    assert set(placed.values()) == {"mbx1", "mbx2"}, placed


# --------------------------------------------------------------------------
# 4. pipelining


def test_1000_pipelined_commands(portico):
    c = logged_in(portico, "frank")
    c.ok("SELECT INBOX")
    tags = ["t%04d" % i for i in range(1, 1001)]
    c.send("".join("%s NOOP\r\n" % t for t in tags))
    got = []
    while len(got) < len(tags):
        line = c.readline()
        if re.match(rb"t\d{4} ", line):
            got.append(line)
    assert [l.split(b" ")[0].decode() for l in got] == tags
    bad = [l for l in got if status_of(l) != b"OK"]
    assert not bad, bad[:5]
    c.close()


# --------------------------------------------------------------------------
# 5. IDLE


def test_idle_sees_exists_from_another_connection(portico):
    c = logged_in(portico, "grace", timeout=5)
    before = exists_count(c.ok("SELECT INBOX"))
    c.send("i1 IDLE\r\n")
    cont = c.readline()
    assert cont.startswith(b"+"), cont
    append_via(portico, "grace", new_marker("idle"))
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "no EXISTS during IDLE"
        line = c.readline()  # socket timeout 5 s
        mm = re.match(rb"\* (\d+) EXISTS", line)
        if mm and int(mm.group(1)) > before:
            break
    c.send("DONE\r\n")
    tagged, _ = c.read_response("i1")
    assert tagged.startswith(b"i1 OK"), tagged
    c.close()


# --------------------------------------------------------------------------
# 6, 7. login failures and AUTHENTICATE


def test_wrong_password_then_right_one_on_same_connection(portico):
    c = ImapConn(portico.port)
    tagged, _ = c.command("LOGIN alice %s" % quote(WRONG_PASSWORD), tag="x1")
    assert tagged.startswith(b"x1 NO"), tagged
    tagged, _ = c.command("LOGIN alice %s" % quote(PASSWORD), tag="x2")
    assert tagged.startswith(b"x2 OK"), tagged
    tagged, _ = c.command("SELECT INBOX", tag="x3")
    assert tagged.startswith(b"x3 OK"), tagged
    c.close()


def test_authenticate_plain_with_sasl_ir(portico):
    c = ImapConn(portico.port)
    tagged, _ = c.command("AUTHENTICATE PLAIN " + plain_b64("bob"), tag="s1")
    assert tagged.startswith(b"s1 OK"), tagged
    tagged, _ = c.command("SELECT INBOX", tag="s2")
    assert tagged.startswith(b"s2 OK"), tagged
    c.close()


def test_authenticate_plain_without_sasl_ir(portico):
    c = ImapConn(portico.port)
    c.send("s1 AUTHENTICATE PLAIN\r\n")
    cont = c.readline()
    assert cont.startswith(b"+"), cont
    c.send(plain_b64("bob") + "\r\n")
    tagged, _ = c.read_response("s1")
    assert tagged.startswith(b"s1 OK"), tagged
    tagged, _ = c.command("NOOP", tag="s2")
    assert tagged.startswith(b"s2 OK"), tagged
    c.close()


def test_imaplib_authenticate_plain(portico):
    m = imap(portico)
    typ, data = m.authenticate("PLAIN", lambda _challenge: b"\0carol\0" + PASSWORD.encode())
    assert typ == "OK", data
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    m.logout()


def test_login_with_literals(portico):
    # Clients send user names and passwords as literals when they hold
    # special characters: synchronizing ({n}: wait for "+") and LITERAL+ ({n+}).
    pw = PASSWORD
    c = ImapConn(portico.port)
    c.send("q1 LOGIN {5}\r\n")
    assert c.readline().startswith(b"+")
    c.send("alice {%d}\r\n" % len(pw))
    assert c.readline().startswith(b"+")
    c.send(pw + "\r\n")
    tagged, _ = c.read_response("q1")
    assert tagged.startswith(b"q1 OK"), tagged
    c.close()

    c = ImapConn(portico.port)
    msg = make_message("literal plus", marker=new_marker("lplus"))
    # LOGIN with LITERAL+, then an APPEND with LITERAL+ and a NOOP, all in one write.
    c.send(b"q1 LOGIN {5+}\r\nalice {%d+}\r\n%s\r\n" % (len(pw), pw.encode())
           + b"q2 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\nq3 NOOP\r\n")
    for tag in ("q1", "q2", "q3"):
        tagged, _ = c.read_response(tag)
        assert tagged.startswith(tag.encode() + b" OK"), tagged
    c.close()


def test_oversized_prelogin_literal_refused(portico):
    c = ImapConn(portico.port, timeout=5)
    c.send("q1 LOGIN alice {100000}\r\n")  # above prelogin_max_literal = 8192
    line = c.readline()
    assert re.match(rb"(q1|\*) (BAD|NO|BYE)", line), line
    assert not line.startswith(b"+"), "Portico invited a 100 kB pre-login literal"
    c.close()


def test_curl_lists_and_fetches(portico):
    user = "user50"
    marker = new_marker("curl")
    m = imap(portico, user)
    typ, data = m.append("INBOX", None, None, make_message("curl fetch", marker=marker))
    assert typ == "OK", data
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.logout()
    base = "imap://127.0.0.1:%d" % portico.port
    listing = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "--url", base + "/", "-u", "%s:%s" % (user, PASSWORD)],
        capture_output=True, timeout=30,
    )
    assert listing.returncode == 0, listing.stderr
    assert b"INBOX" in listing.stdout, listing.stdout
    fetched = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "--url", "%s/INBOX;UID=%s" % (base, uid),
         "-u", "%s:%s" % (user, PASSWORD)],
        capture_output=True, timeout=30,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert marker.encode() in fetched.stdout, fetched.stdout[:500]


# --------------------------------------------------------------------------
# 8, 9. backend failures (own backends: these stop and kill them)


def test_backend_killed_mid_session_gives_bye_unavailable(own_backends, portico_factory):
    p = portico_factory(own_backends)
    c = logged_in(p, "heidi", timeout=3)
    c.ok("SELECT INBOX")
    marker = new_marker("kill")
    assert status_of(c.append(make_message("before kill", marker=marker))) == b"OK"
    victim = by_name(own_backends, backend_of(own_backends, "heidi", marker))
    t0 = time.monotonic()
    victim.kill()
    data, how = c.read_until_closed(3.0)
    elapsed = time.monotonic() - t0
    assert b"* BYE [UNAVAILABLE]" in data, (data, how)
    assert how in ("eof", "reset"), "connection not closed by Portico within 3 s: %r" % ((data, how),)
    assert elapsed < 1.5, "closed %.2fs after the backend died" % elapsed
    # Portico itself is unharmed.
    c2 = ImapConn(p.port)
    assert c2.greeting.startswith(b"* OK")
    c2.close()
    victim.start()


def test_backend_down_at_login_fails_over_then_unavailable(own_backends, portico_factory):
    p = portico_factory(own_backends)
    user = "alice"
    m1 = new_marker("first")
    append_via(p, user, m1)
    first = by_name(own_backends, backend_of(own_backends, user, m1))
    other = next(b for b in own_backends if b is not first)

    first.stop()
    m2 = new_marker("failover")
    append_via(p, user, m2)
    assert other.messages_with(user, m2), "failover append did not land on %s" % other.name
    assert not first.messages_with(user, m2)

    other.stop()
    c = ImapConn(p.port)
    tagged, _ = c.command("LOGIN %s %s" % (user, quote(PASSWORD)), tag="u1")
    assert tagged.startswith(b"u1 NO [UNAVAILABLE]"), tagged
    # Still in pre-login: the connection stays usable.
    tagged, _ = c.command("NOOP", tag="u2")
    assert tagged.startswith(b"u2 OK"), tagged
    c.close()


# --------------------------------------------------------------------------
# 10. pre-login limits, 14. pre-login commands


def test_huge_prelogin_line_gets_bad_and_close(portico):
    c = ImapConn(portico.port, timeout=5)
    try:
        c.send(b"l1 LOGIN " + b"x" * (100 * 1024) + b" pw\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # Portico may close before the whole line is written
    data, how = c.read_until_closed(5.0)
    assert re.search(rb"(^|\r\n)(\*|l1) BAD", data), (data[:300], how)
    assert how in ("eof", "reset"), "Portico kept the connection open: %r" % how
    c.close()


def test_unknown_command_before_login(portico):
    c = ImapConn(portico.port)
    tagged, _ = c.command("FROBNICATE now", tag="k1")
    assert tagged.startswith(b"k1 BAD") or tagged.startswith(b"k1 NO"), tagged
    tagged, _ = c.command("SELECT INBOX", tag="k2")
    assert tagged.startswith(b"k2 BAD") or tagged.startswith(b"k2 NO"), tagged
    tagged, _ = c.command("NOOP", tag="k3")
    assert tagged.startswith(b"k3 OK"), tagged
    c.close()


def test_id_before_login(portico):
    c = ImapConn(portico.port)
    tagged, untagged = c.command('ID ("name" "pytest" "version" "1")', tag="d1")
    assert tagged.startswith(b"d1 OK"), tagged
    assert any(l.startswith(b"* ID (") for l in untagged), untagged
    c.close()


def test_logout_before_login(portico):
    c = ImapConn(portico.port)
    tagged, untagged = c.command("LOGOUT", tag="o1")
    assert any(l.startswith(b"* BYE") for l in untagged), untagged
    assert tagged.startswith(b"o1 OK"), tagged
    data, how = c.read_until_closed(3.0)
    assert how in ("eof", "reset") and data == b"", (data, how)


# --------------------------------------------------------------------------
# 11. concurrency


def test_200_concurrent_sessions(portico):
    n = 200
    barrier = threading.Barrier(n)
    errors = []
    done = []
    lock = threading.Lock()

    def session(i):
        c = None
        try:
            c = ImapConn(portico.port, timeout=30)
            tagged = c.login("user%02d" % (i % 100))
            assert status_of(tagged) == b"OK", tagged
            c.ok("SELECT INBOX")
            barrier.wait(timeout=60)  # all 200 are logged in at once
            c.ok("NOOP")
            tagged, untagged = c.command("LOGOUT")
            assert status_of(tagged) == b"OK" and any(l.startswith(b"* BYE") for l in untagged), tagged
            with lock:
                done.append(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            barrier.abort()
            with lock:
                errors.append("session %d: %r" % (i, e))
        finally:
            if c:
                c.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "sessions still running after 120 s"
    real = [e for e in errors if "BrokenBarrierError" not in e] or errors
    assert not errors, "%d failed, first: %s" % (len(errors), real[:3])
    assert len(done) == n


# --------------------------------------------------------------------------
# 12. reload


def test_sighup_reload_keeps_sessions_and_routes_new_ones(backends, dovecot_factory, portico):
    mbx3 = dovecot_factory("mbx3")
    old = imap(portico, "bob")
    marker = new_marker("reload")
    typ, data = old.append("INBOX", None, None, make_message("before reload", marker=marker))
    assert typ == "OK", data
    typ, _ = old.select("INBOX")
    assert typ == "OK"

    users = ["user%02d" % i for i in range(20, 40)]
    before_marker = new_marker("pre")
    before = {}
    for u in users:
        append_via(portico, u, before_marker)
        before[u] = backend_of(backends, u, before_marker)

    cfg = portico.default_config()
    cfg["backend"].append({"name": "mbx3", "address": mbx3.address, "weight": 1,
                           "forward_id": False, "proxy_protocol": False})
    portico.reload(config={"backend": cfg["backend"]})

    # The session opened before the reload still works.
    typ, data = old.noop()
    assert typ == "OK", data
    typ, data = old.uid("SEARCH", None, "HEADER", "X-Portico-Marker", marker)
    assert typ == "OK" and data[0].split(), data
    typ, data = old.fetch("1:*", "(FLAGS)")
    assert typ == "OK", data
    old.logout()

    # New logins work and use the new backend list.
    all3 = list(backends) + [mbx3]
    after_marker = new_marker("post")
    after = {}
    for u in users:
        append_via(portico, u, after_marker)
        after[u] = backend_of(all3, u, after_marker)
    assert "mbx3" in after.values(), "no user moved to the new backend mbx3: %r" % after
    # Rendezvous hashing: adding a backend moves users only onto it.
    moved_elsewhere = {u: (before[u], after[u]) for u in users if after[u] not in (before[u], "mbx3")}
    assert not moved_elsewhere, moved_elsewhere


# --------------------------------------------------------------------------
# 13. descriptors


def test_no_fd_leak_after_dropped_and_killed_sessions(own_backends, portico_factory):
    p = portico_factory(own_backends)
    warm = logged_in(p, "user60")
    warm_port = warm.local_port
    warm.command("LOGOUT")
    warm.close()
    p.wait_for_session_ends([warm_port], timeout=10)
    # The warm-up's backend side may close a moment after its log line.
    last = [p.open_fds()]

    def settled():
        time.sleep(0.1)
        now = p.open_fds()
        same, last[0] = now == last[0], now
        return same

    wait_until(settled, 3)
    baseline_targets = p.fd_targets()
    baseline = len(baseline_targets)

    ports = []
    for i in range(50):
        c = logged_in(p, "user%02d" % (60 + i % 30))
        c.ok("SELECT INBOX")
        ports.append(c.local_port)
        if i % 2:
            c.abort()  # RST
        else:
            c.close()  # FIN, no LOGOUT

    doomed = [logged_in(p, "user%02d" % (90 + i), timeout=3) for i in range(5)]
    for c in doomed:
        c.ok("SELECT INBOX")
        ports.append(c.local_port)
    for b in own_backends:
        b.kill()
    for c in doomed:
        data, how = c.read_until_closed(3.0)
        assert how in ("eof", "reset"), (data, how)
        c.close()

    p.wait_for_session_ends(ports, timeout=15)
    ok = wait_until(lambda: p.open_fds() == baseline, 5)
    assert ok, "fds %d -> %d\nnew: %s" % (
        baseline, p.open_fds(), sorted(set(p.fd_targets()) - set(baseline_targets)))


# --------------------------------------------------------------------------
# 15. operational log


def test_session_end_log_lines_and_no_password(backends, portico):
    users = ["user70", "user71", "user72"]
    ports = {}
    # LOGIN + LOGOUT
    c = logged_in(portico, users[0])
    ports[users[0]] = c.local_port
    c.command("LOGOUT")
    c.close()
    # AUTHENTICATE PLAIN (SASL-IR) + abrupt close
    c = ImapConn(portico.port)
    ports[users[1]] = c.local_port
    tagged, _ = c.command("AUTHENTICATE PLAIN " + plain_b64(users[1]))
    assert status_of(tagged) == b"OK", tagged
    c.ok("SELECT INBOX")
    c.close()
    # wrong password first, then the right one, then LOGOUT
    c = ImapConn(portico.port)
    ports[users[2]] = c.local_port
    tagged, _ = c.command("LOGIN %s %s" % (users[2], quote(WRONG_PASSWORD)))
    assert status_of(tagged) == b"NO", tagged
    assert status_of(c.login(users[2])) == b"OK"
    c.command("LOGOUT")
    c.close()

    ends = portico.wait_for_session_ends(ports.values(), timeout=10)
    for u, port in ports.items():
        mine = ends[port]
        assert len(mine) == 1, "want exactly one session end line for %s (port %d): %r" % (u, port, mine)
        line = mine[0]
        assert "client=127.0.0.1:%d" % port in line, line
        assert re.search(r"\buser=%s\b" % u, line), line
        assert re.search(r"\bbackend=mbx[12]\b", line), line
        assert "reason=" in line, line

    text = portico.log_text()
    for secret in (PASSWORD, WRONG_PASSWORD, plain_b64(users[1])):
        assert secret not in text, "secret %r found in the operational log" % secret


# --------------------------------------------------------------------------
# 16. shutdown


def test_sigterm_sends_bye_and_exits(backends, portico_factory):
    shutdown_s = 3
    p = portico_factory(backends, config={"timeouts": {"shutdown": "%ds" % shutdown_s}})
    c = logged_in(p, "user80", timeout=shutdown_s + 2)
    c.ok("SELECT INBOX")
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    data, how = c.read_until_closed(shutdown_s + 2)
    assert re.search(rb"(^|\r\n)\* BYE", data), (data, how)
    assert how in ("eof", "reset"), (data, how)
    try:
        rc = p.proc.wait(timeout=max(0.1, shutdown_s + 1 - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pytest.fail("portico still running %.1fs after SIGTERM (shutdown bound %ds)"
                    % (time.monotonic() - t0, shutdown_s))
    assert rc == 0, "exit code %s\n%s" % (rc, p.log_tail())


def test_ipv4_and_ipv6_listeners(backends, portico_factory):
    """One Portico listens on 127.0.0.1 and [::1]; both serve a full session."""
    from harness import free_port

    v4_port, v6_port = free_port(), free_port()
    p = portico_factory(backends, config={"listen": [
        {"address": "127.0.0.1:%d" % v4_port},
        {"address": "[::1]:%d" % v6_port},
    ]})
    for host, port in (("127.0.0.1", v4_port), ("::1", v6_port)):
        m = imaplib.IMAP4(host, port, timeout=10)
        assert m.login("alice", PASSWORD)[0] == "OK"
        typ, data = m.select("INBOX")
        assert typ == "OK", data
        assert m.logout()[0] == "BYE"
    # The session log names the IPv6 client in brackets.
    assert wait_until(lambda: "client=[::1]:" in p.log_text(), timeout=5), p.log_text()[-2000:]
