"""Listeners across SIGHUP (issue 9, defect 3), against a real Dovecot.

Bound sockets are matched to [[listen]] entries by address: reordering the
entries changes nothing, a TLS setting changed on an address applies to the
connections accepted from then on (open sessions keep theirs), added
addresses are bound and removed ones closed, and a reload that cannot bind a
new address is refused whole, keeping the old, matching settings.

Clients: Python's ssl (implicit TLS, STARTTLS) and raw sockets for the
plaintext checks. Every read is bounded; no sleeps as synchronisation.
"""

import os
import re
import signal
import socket
import ssl


from harness import PASSWORD, LineReader, free_port, wait_until


def tls_ctx(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def login_and_select(r: LineReader, user: str) -> None:
    assert r.command("l1", 'LOGIN %s "%s"' % (user, PASSWORD))[-1].startswith(b"l1 OK")
    assert r.command("l2", "SELECT INBOX")[-1].startswith(b"l2 OK")


def open_tls(port, pki):
    """Implicit TLS: handshake first, then the greeting. Returns (sock, Lines, greeting)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s = tls_ctx(pki).wrap_socket(raw, server_hostname="mail.test")
    except BaseException:
        raw.close()
        raise
    r = LineReader(s)
    return s, r, r.readline()


def open_plain(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    r = LineReader(s)
    return s, r, r.readline()


def assert_serves_implicit_tls(port, pki, user="alice"):
    s, r, greeting = open_tls(port, pki)
    with s:
        assert greeting.startswith(b"* OK"), greeting
        caps = greeting.decode()
        assert "STARTTLS" not in caps, greeting
        login_and_select(r, user)
        r.command("l3", "LOGOUT")


def assert_plaintext_refused(port):
    """A plaintext client on an implicit-TLS port gets neither a greeting nor
    a LOGIN: Portico waits for a ClientHello (tls_handshake is 1s here)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    with s:
        s.settimeout(5)
        s.sendall(b'a1 LOGIN alice "%s"\r\n' % PASSWORD.encode())
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        assert b"* OK" not in data and b"a1 OK" not in data, data
        assert data == b"" or data[:1] == b"\x15", data  # nothing, or a TLS alert


def assert_serves_plain(port, user="bob", expect_caps=()):
    s, r, greeting = open_plain(port)
    with s:
        assert greeting.startswith(b"* OK"), greeting
        for cap in expect_caps:
            assert cap.encode() in greeting, (cap, greeting)
        if "LOGINDISABLED" not in expect_caps:
            login_and_select(r, user)
        r.command("l3", "LOGOUT")


def assert_serves_starttls_required(port, pki, user="carol"):
    s, r, greeting = open_plain(port)
    try:
        assert greeting.startswith(b"* OK"), greeting
        assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting, greeting
        lines = r.command("a", 'LOGIN %s "%s"' % (user, PASSWORD))
        assert lines[-1].startswith(b"a NO [PRIVACYREQUIRED]"), lines
        assert r.command("b", "STARTTLS")[-1].startswith(b"b OK")
        s = tls_ctx(pki).wrap_socket(s, server_hostname="mail.test")
        r = LineReader(s)
        login_and_select(r, user)
        r.command("c", "LOGOUT")
    finally:
        s.close()


def listen_plain(port):
    return {"address": "127.0.0.1:%d" % port}


def listen_tls(port, pki, mode="implicit", **kw):
    entry = {"address": "127.0.0.1:%d" % port, "tls": mode, "cert": str(pki.mail.cert),
             "key": str(pki.mail.key)}
    entry.update(kw)
    return entry


def start(portico_factory, backends, listen):
    p = portico_factory([backends[0]], start=False)
    p.config = {"listen": listen(p), "timeouts": {"tls_handshake": "1s"}}
    return p.start()


def reload_with(p, listen) -> list:
    """Rewrites [[listen]], SIGHUPs, waits for `reload: done`; returns the
    lines logged by this reload."""
    since = len(p.lines())
    p.reload({"listen": listen, "timeouts": {"tls_handshake": "1s"}})
    return p.lines()[since:]


def test_reorder_keeps_tls_on_its_address(portico_factory, backends, pki):
    implicit = free_port()
    p = start(portico_factory, backends, lambda p: [listen_plain(p.port), listen_tls(implicit, pki)])
    assert_serves_implicit_tls(implicit, pki)
    assert_serves_plain(p.port)

    lines = reload_with(p, [listen_tls(implicit, pki), listen_plain(p.port)])
    assert any("reload: done" in l and "listeners unchanged" in l for l in lines), lines

    # The implicit port still does TLS first and never greets or logs in
    # in plaintext; the plain port still greets in plaintext.
    assert_serves_implicit_tls(implicit, pki)
    assert_plaintext_refused(implicit)
    assert_serves_plain(p.port)

    # Back again: same result.
    reload_with(p, [listen_plain(p.port), listen_tls(implicit, pki)])
    assert_serves_implicit_tls(implicit, pki)
    assert_plaintext_refused(implicit)
    assert_serves_plain(p.port)


def test_tls_mode_change_on_same_address_applies_to_new_connections(portico_factory, backends, pki):
    port_b = free_port()
    p = start(portico_factory, backends, lambda p: [listen_plain(p.port), listen_tls(port_b, pki)])
    port_a = p.port
    # Sessions open across the reload keep what they started with.
    old_plain, old_plain_r, g1 = open_plain(port_a)
    old_tls, old_tls_r, g2 = open_tls(port_b, pki)
    try:
        assert g1.startswith(b"* OK") and g2.startswith(b"* OK")
        login_and_select(old_plain_r, "dave")
        login_and_select(old_tls_r, "erin")

        # A: none -> implicit; B: implicit -> starttls with require_tls.
        lines = reload_with(p, [listen_tls(port_a, pki),
                                listen_tls(port_b, pki, mode="starttls", require_tls=True)])
        text = "\n".join(lines)
        assert re.search(r"reload: listener 127\.0\.0\.1:%d \(tls none -> implicit\)" % port_a, text), text
        assert re.search(r"reload: listener 127\.0\.0\.1:%d \(tls implicit -> starttls, "
                         r"require_tls false -> true\)" % port_b, text), text
        assert any("reload: done" in l and "changed" in l for l in lines), lines

        assert_serves_implicit_tls(port_a, pki)
        assert_plaintext_refused(port_a)
        assert_serves_starttls_required(port_b, pki)

        for tag, r in (("n1", old_plain_r), ("n2", old_tls_r)):
            assert r.command(tag, "NOOP")[-1].startswith(tag.encode() + b" OK")
            assert r.command(tag + "x", "LOGOUT")[-1].startswith(tag.encode() + b"x OK")
    finally:
        old_plain.close()
        old_tls.close()


def connect_refused(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_added_and_removed_listeners(portico_factory, backends, pki):
    port_c = free_port()
    p = start(portico_factory, backends, lambda p: [listen_plain(p.port)])
    port_a = p.port
    assert connect_refused(port_c)

    lines = reload_with(p, [listen_plain(port_a), listen_tls(port_c, pki)])
    assert any("reload: listening on 127.0.0.1:%d (tls implicit)" % port_c in l for l in lines), lines
    assert any("reload: done" in l and "listeners added 127.0.0.1:%d" % port_c in l for l in lines), lines
    assert_serves_implicit_tls(port_c, pki)
    assert_plaintext_refused(port_c)
    assert_serves_plain(port_a)

    # A session on A stays while A is closed.
    old, old_r, greeting = open_plain(port_a)
    try:
        assert greeting.startswith(b"* OK")
        login_and_select(old_r, "frank")
        lines = reload_with(p, [listen_tls(port_c, pki)])
        assert any("reload: closing listener 127.0.0.1:%d" % port_a in l for l in lines), lines
        assert any("reload: done" in l and "removed 127.0.0.1:%d" % port_a in l for l in lines), lines
        # The workers close A's sockets right after the reload.
        assert wait_until(lambda: connect_refused(port_a), 5.0), "port A still accepts connections"
        assert_serves_implicit_tls(port_c, pki)
        assert old_r.command("n1", "NOOP")[-1].startswith(b"n1 OK")
        assert old_r.command("n2", "LOGOUT")[-1].startswith(b"n2 OK")
    finally:
        old.close()

    # And A comes back.
    reload_with(p, [listen_tls(port_c, pki), listen_plain(port_a)])
    assert_serves_plain(port_a)


def test_reload_that_cannot_bind_is_refused_whole(portico_factory, backends, pki):
    port_b = free_port()
    p = start(portico_factory, backends, lambda p: [listen_plain(p.port)])
    port_a = p.port
    # Something else holds B (without SO_REUSEPORT, so Portico cannot share it).
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", port_b))
        blocker.listen(1)
        p.config = {"listen": [listen_tls(port_a, pki), listen_plain(port_b)],
                    "timeouts": {"tls_handshake": "1s"}}
        p.write_config()
        since = len(p.lines())
        os.kill(p.pid, signal.SIGHUP)
        failed = p.wait_for_line("reload: failed", since=since, timeout=10)
        assert "127.0.0.1:%d" % port_b in failed[0] and "address already in use" in failed[0], failed
        assert "keeping the running configuration" in failed[0], failed
        assert not any("reload: done" in l for l in p.lines()[since:])
        # The old settings, all of them: A is still plain (its change to
        # implicit was not applied either).
        assert_serves_plain(port_a)
    finally:
        blocker.close()
    # Once B is free, the same file applies.
    reload_with(p, [listen_tls(port_a, pki), listen_plain(port_b)])
    assert_serves_implicit_tls(port_a, pki)
    assert_serves_plain(port_b)
