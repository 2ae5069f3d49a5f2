"""TLS on both sides of Portico, with real clients and real TLS backends.

Client side: Python's ssl/imaplib (implicit TLS and STARTTLS), the
`openssl s_client` and `curl` command-line clients, and raw sockets for
what those cannot express (pipelined injection, stalled handshakes).

Backend side: two real Dovecot servers with TLS (one reached with implicit
TLS, one with STARTTLS; Dovecot logs ", TLS," on logins that used TLS), and
a small Python IMAP-over-TLS stub for what Dovecot cannot be made to do:
present a bad certificate (another CA, expired, wrong name), demand a
client certificate, refuse STARTTLS, or append plaintext to its STARTTLS
OK. The stub records every byte it receives, so a test can assert that no
LOGIN ever reached a server Portico should have refused.

Certificates are made at test time by tls_certs.TestPki (openssl CLI).
Every socket read and every subprocess has a timeout.
"""

import imaplib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from harness import PASSWORD, Dovecot, LineReader, free_port, make_message, sanitizer_of, sha256, wait_until
from tls_certs import cert_serial, spki_sha256

# Users pinned to a backend through the routing map file.
USER_IMPLICIT = "alice"   # -> tlsimp (Portico -> Dovecot with implicit TLS)
USER_STARTTLS = "bob"     # -> tlsstart (Portico -> Dovecot with STARTTLS)
USER_CURL = "carol"       # -> tlsstart


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tls_backends(pki):
    """Two Dovecots with TLS (both offer STARTTLS and implicit TLS)."""
    made = []
    try:
        for name in ("tlsimp", "tlsstart"):
            d = Dovecot(name, tls={"cert": pki.mail.cert, "key": pki.mail.key})
            made.append(d)
            d.start()
        yield {d.name: d for d in made}
    finally:
        for d in made:
            d.cleanup()


def client_ctx(pki, cafile=None, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile or pki.ca))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class TlsSetup:
    """A Portico with three TLS listeners in front of the TLS Dovecots.

    port          STARTTLS, require_tls, default cert mail.test, SNI other.test
                  and *.wild.test
    implicit_port implicit TLS, same certificates
    tls13_port    implicit TLS with tls_min_version = "TLSv1.3"
    """

    def __init__(self, portico, implicit_port, tls13_port):
        self.p = portico
        self.port = portico.port
        self.implicit_port = implicit_port
        self.tls13_port = tls13_port


def listener_certs(pki, wild):
    return [
        {"server_name": "other.test", "cert": str(pki.other.cert), "key": str(pki.other.key)},
        {"server_name": "*.wild.test", "cert": str(wild.cert), "key": str(wild.key)},
    ]


def tls_backend_entry(name, address, mode, pki, **kw):
    entry = {"name": name, "address": address, "weight": 1, "tls": mode, "ca": str(pki.ca),
             "server_name": "mail.test"}
    entry.update(kw)
    return entry


@pytest.fixture(scope="module")
def wild_leaf(pki):
    return pki.issue("x.wild.test", dns=["*.wild.test"])


def start_tls_portico(portico_factory, pki, wild_leaf, backends, extra=None, cert=None, key=None,
                      map_lines=(), connect_retries=2):
    """Portico with the three listeners above; backends is a list of
    [[backend]] dicts (not Dovecot objects)."""
    implicit_port, tls13_port = free_port(), free_port()
    cert = str(cert or pki.mail.cert)
    key = str(key or pki.mail.key)
    p = portico_factory([], start=False)
    map_file = p.workdir / "users.map"
    map_file.write_text("".join("%s %s\n" % pair for pair in map_lines))
    config = {
        "listen": [
            {"address": "127.0.0.1:%d" % p.port, "tls": "starttls", "cert": cert, "key": key,
             "require_tls": True, "certificate": listener_certs(pki, wild_leaf)},
            {"address": "127.0.0.1:%d" % implicit_port, "tls": "implicit", "cert": cert, "key": key,
             "certificate": listener_certs(pki, wild_leaf)},
            {"address": "127.0.0.1:%d" % tls13_port, "tls": "implicit", "cert": cert, "key": key,
             "tls_min_version": "TLSv1.3"},
        ],
        "backend": backends,
        "routing": {"map_file": str(map_file), "connect_retries": connect_retries},
        "timeouts": {"tls_handshake": "1s"},
    }
    if extra:
        config.update(extra)
    p.config = config
    p.start()
    return TlsSetup(p, implicit_port, tls13_port)


@pytest.fixture
def setup(portico_factory, pki, wild_leaf, tls_backends):
    imp, st = tls_backends["tlsimp"], tls_backends["tlsstart"]
    return start_tls_portico(
        portico_factory, pki, wild_leaf,
        [tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki),
         tls_backend_entry("tlsstart", st.address, "starttls", pki)],
        map_lines=[(USER_IMPLICIT, "tlsimp"), (USER_STARTTLS, "tlsstart"), (USER_CURL, "tlsstart")],
    )


# --------------------------------------------------------------------------
# client helpers


class IMAP4SSLNamed(imaplib.IMAP4_SSL):
    """IMAP4_SSL to 127.0.0.1 that sends SNI / checks the name `sni`."""

    def __init__(self, port, sni, ssl_context, timeout=30):
        self._sni = sni
        super().__init__("127.0.0.1", port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self._sni)


def safe_shutdown(m):
    """Closes an imaplib connection whatever state it is in (logout() may
    have closed it already)."""
    try:
        m.shutdown()
    except OSError:
        pass


def imap_starttls(port, ctx, sni="mail.test", timeout=30):
    m = imaplib.IMAP4("127.0.0.1", port, timeout=timeout)
    m.host = sni  # starttls() wraps with server_hostname=self.host
    typ, data = m.starttls(ssl_context=ctx)
    assert typ == "OK", data
    return m


def tls_connect(port, ctx, sni="mail.test", session=None, timeout=10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


def caps_of(lines) -> set:
    for line in lines:
        m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line) or re.match(rb"\* CAPABILITY (.*)\r\n", line)
        if m:
            return set(m.group(1).decode().upper().split())
    raise AssertionError("no capabilities in %r" % (lines,))


def peer_names(sock: ssl.SSLSocket) -> set:
    cert = sock.getpeercert()
    return {v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")}


def peer_serial(sock: ssl.SSLSocket) -> str:
    return cert_serial(ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True)))


def greeting_over_tls(port, ctx, sni="mail.test", session=None):
    """Connect, handshake, read the greeting; returns (sock, greeting)."""
    s = tls_connect(port, ctx, sni=sni, session=session)
    r = LineReader(s)
    return s, r.readline()


def new_marker(prefix="tls"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:16])


def dovecot_tls_login(d: Dovecot, user: str) -> bool:
    """Dovecot logged this user's login as done over TLS."""
    pat = re.compile(r"Login: user=<%s>.*, TLS[,]" % re.escape(user))
    return any(pat.search(l) for l in d.log_text().splitlines())


def big_message(marker):
    # ~10.5 MB after base64 (>= 10 MiB).
    msg = make_message("big " + marker, body_bytes=7_700_000, marker=marker)
    assert len(msg) >= 10 * 1024 * 1024
    return msg


def roundtrip_big(m, marker):
    msg = big_message(marker)
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    typ, data = m.append("INBOX", None, None, msg)
    assert typ == "OK", data
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    typ, data = m.search(None, "HEADER", "X-Portico-Marker", marker)
    assert typ == "OK" and data[0].split(), data
    num = data[0].split()[-1]
    typ, data = m.fetch(num, "(BODY.PEEK[])")
    assert typ == "OK", data
    body = data[0][1]
    assert len(body) == len(msg)
    assert sha256(body) == sha256(msg)


# --------------------------------------------------------------------------
# end to end: TLS clients through Portico to TLS backends


def test_imaps_client_to_implicit_tls_backend_10mib(setup, pki, tls_backends):
    ctx = client_ctx(pki)
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", ctx)
    try:
        assert m.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert "mail.test" in peer_names(m.sock)
        typ, data = m.login(USER_IMPLICIT, PASSWORD)
        assert typ == "OK", data
        roundtrip_big(m, new_marker("imaps"))
        m.logout()
    finally:
        safe_shutdown(m)
    # Portico really spoke TLS to that backend (Dovecot logs ", TLS," on
    # such logins), and the user went where the map says.
    assert wait_until(lambda: dovecot_tls_login(tls_backends["tlsimp"], USER_IMPLICIT), 3.0), \
        tls_backends["tlsimp"].log_text()[-2000:]


def test_starttls_client_to_starttls_backend_10mib(setup, pki, tls_backends):
    ctx = client_ctx(pki)
    m = imap_starttls(setup.port, ctx)
    try:
        assert "mail.test" in peer_names(m.sock)
        typ, data = m.login(USER_STARTTLS, PASSWORD)
        assert typ == "OK", data
        roundtrip_big(m, new_marker("starttls"))
        m.logout()
    finally:
        safe_shutdown(m)
    assert wait_until(lambda: dovecot_tls_login(tls_backends["tlsstart"], USER_STARTTLS), 3.0), \
        tls_backends["tlsstart"].log_text()[-2000:]


def test_openssl_s_client_starttls(setup, pki):
    script = ("a LOGIN %s %s\r\nb SELECT INBOX\r\nc LOGOUT\r\n" % (USER_STARTTLS, PASSWORD)).encode()
    p = subprocess.run(
        ["timeout", "20", "openssl", "s_client", "-starttls", "imap", "-connect",
         "127.0.0.1:%d" % setup.port, "-CAfile", str(pki.ca), "-verify_return_error",
         "-servername", "mail.test", "-verify_hostname", "mail.test", "-quiet"],
        input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    assert re.search(r"^a OK", out, re.M), (out, err)
    assert re.search(r"^b OK", out, re.M), (out, err)
    assert re.search(r"^\* BYE", out, re.M) and re.search(r"^c OK", out, re.M), (out, err)
    assert "verify return:1" in err and "verify error" not in err, err
    assert p.returncode == 0, (p.returncode, out, err)


def test_openssl_s_client_rejects_wrong_hostname(setup, pki):
    # Control for the test above: the same client does fail verification
    # when it expects a name the certificate does not carry.
    p = subprocess.run(
        ["timeout", "20", "openssl", "s_client", "-starttls", "imap", "-connect",
         "127.0.0.1:%d" % setup.port, "-CAfile", str(pki.ca), "-verify_return_error",
         "-servername", "mail.test", "-verify_hostname", "nomatch.test", "-quiet"],
        input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode != 0
    assert "hostname mismatch" in p.stderr.decode(errors="replace")


def curl(args, timeout=30):
    p = subprocess.run(["timeout", str(timeout), "curl", "-sS", "--max-time", str(timeout - 5)] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def test_curl_starttls_and_imaps(setup, pki):
    marker = new_marker("curl")
    msg = make_message("curl " + marker, body_bytes=200_000, marker=marker)
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", client_ctx(pki))
    try:
        assert m.login(USER_CURL, PASSWORD)[0] == "OK"
        assert m.append("INBOX", None, None, msg)[0] == "OK"
        m.logout()
    finally:
        safe_shutdown(m)
    auth = ["-u", "%s:%s" % (USER_CURL, PASSWORD), "--cacert", str(pki.ca)]
    # STARTTLS (--ssl-reqd): list mailboxes.
    resolve = ["--resolve", "mail.test:%d:127.0.0.1" % setup.port]
    rc, out, err = curl(["--ssl-reqd", "imap://mail.test:%d/" % setup.port] + auth + resolve)
    assert rc == 0, err
    assert re.search(rb'^\* LIST .*INBOX', out, re.M | re.I), out
    # Implicit TLS: search for the message, then fetch it whole.
    resolve = ["--resolve", "mail.test:%d:127.0.0.1" % setup.implicit_port]
    base = "imaps://mail.test:%d/INBOX" % setup.implicit_port
    rc, out, err = curl([base, "-X", "UID SEARCH HEADER X-Portico-Marker %s" % marker] + auth + resolve)
    assert rc == 0, err
    uids = re.search(rb"\* SEARCH ([\d ]+)", out)
    assert uids, out
    uid = int(uids.group(1).split()[-1])
    rc, out, err = curl(["%s;UID=%d" % (base, uid)] + auth + resolve)
    assert rc == 0, err
    assert sha256(out) == sha256(msg), (len(out), len(msg))
    # curl without --cacert must refuse the certificate (the test CA is not
    # in the system store), which shows --cacert was what made it work.
    rc, out, err = curl([base, "-u", "%s:%s" % (USER_CURL, PASSWORD)] + resolve)
    assert rc == 60, (rc, err)  # CURLE_PEER_FAILED_VERIFICATION


# --------------------------------------------------------------------------
# STARTTLS rules


@pytest.mark.parametrize("before,injected", [
    ("", "b CAPABILITY"),
    ("", "b LOGIN %s %s" % (USER_STARTTLS, PASSWORD)),
    # A command ahead of STARTTLS in the same write is answered; only what
    # follows STARTTLS is dropped.
    ("z NOOP\r\n", "b CAPABILITY\r\nb2 LOGIN %s %s" % (USER_STARTTLS, PASSWORD)),
])
def test_starttls_plaintext_injection_is_discarded(setup, pki, before, injected):
    raw = socket.create_connection(("127.0.0.1", setup.port), timeout=10)
    try:
        r = LineReader(raw)
        assert r.readline().startswith(b"* OK")
        # One write: STARTTLS and a command an attacker appended in plaintext.
        raw.sendall(("%sa STARTTLS\r\n%s\r\n" % (before, injected)).encode())
        if before:
            line = r.readline()
            assert line.startswith(b"z OK"), line
        line = r.readline()
        assert line.startswith(b"a OK"), line
        # Nothing else may come in plaintext (a "b" answer before TLS).
        raw.settimeout(0.3)
        try:
            extra = raw.recv(4096)
        except socket.timeout:
            extra = b""
        assert extra == b"" and r.buf == b"", (extra, r.buf)
        raw.settimeout(10)
        s = client_ctx(pki).wrap_socket(raw, server_hostname="mail.test")
        raw = s
        tr = LineReader(s)
        s.sendall(b"c NOOP\r\n")
        lines = tr.until_tagged(b"c")
        assert not any(l.startswith(b"b") for l in lines), lines
        assert lines[-1].startswith(b"c OK"), lines
        # Still not authenticated: the injected LOGIN did not run.
        lines = tr.command("d", "SELECT INBOX")
        assert not any(l.startswith(b"b") for l in lines), lines
        assert re.match(rb"d (NO|BAD)", lines[-1]), lines
        # And no late "b" answer either.
        s.settimeout(0.3)
        try:
            late = s.recv(4096)
        except socket.timeout:
            late = b""
        assert not re.search(rb"(^|\n)b2? ", late), late
    finally:
        raw.close()


def test_require_tls_logindisabled_and_privacyrequired(setup, pki):
    raw = socket.create_connection(("127.0.0.1", setup.port), timeout=10)
    try:
        r = LineReader(raw)
        greeting = r.readline()
        caps = caps_of([greeting])
        assert {"STARTTLS", "LOGINDISABLED"} <= caps, greeting
        assert not any(c.startswith("AUTH=") for c in caps), greeting
        lines = r.command("a", "CAPABILITY")
        caps = caps_of(lines)
        assert {"STARTTLS", "LOGINDISABLED"} <= caps, lines
        assert not any(c.startswith("AUTH=") for c in caps), lines
        lines = r.command("b", 'LOGIN %s "%s"' % (USER_STARTTLS, PASSWORD))
        assert lines[-1].startswith(b"b NO [PRIVACYREQUIRED]"), lines
        lines = r.command("c", "AUTHENTICATE PLAIN")
        assert lines[-1].startswith(b"c NO [PRIVACYREQUIRED]"), lines
        lines = r.command("d", "STARTTLS")
        assert lines[-1].startswith(b"d OK"), lines
        s = client_ctx(pki).wrap_socket(raw, server_hostname="mail.test")
        raw = s
        r = LineReader(s)
        caps = caps_of(r.command("e", "CAPABILITY"))
        assert "LOGINDISABLED" not in caps and "STARTTLS" not in caps, caps
        assert "AUTH=PLAIN" in caps, caps
        lines = r.command("f", "STARTTLS")
        assert re.match(rb"f (NO|BAD)", lines[-1]), lines
        lines = r.command("g", 'LOGIN %s "%s"' % (USER_STARTTLS, PASSWORD))
        assert lines[-1].startswith(b"g OK"), lines
        r.command("h", "LOGOUT")
    finally:
        raw.close()


def test_implicit_listener_has_no_starttls(setup, pki):
    s, greeting = greeting_over_tls(setup.implicit_port, client_ctx(pki))
    with s:
        caps = caps_of([greeting])
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, greeting
        lines = LineReader(s).command("a", "STARTTLS")
        assert re.match(rb"a (NO|BAD)", lines[-1]), lines


# --------------------------------------------------------------------------
# listener TLS properties


@pytest.mark.parametrize("sni,expect", [("mail.test", "mail.test"), ("other.test", "other.test"),
                                        ("a.wild.test", "*.wild.test")])
def test_sni_selects_certificate(setup, pki, sni, expect):
    ctx = client_ctx(pki)
    s, greeting = greeting_over_tls(setup.implicit_port, ctx, sni=sni)
    with s:
        assert greeting.startswith(b"* OK"), greeting
        assert expect in peer_names(s), s.getpeercert()
    # Same over STARTTLS.
    m = imap_starttls(setup.port, ctx, sni=sni)
    try:
        assert expect in peer_names(m.sock)
    finally:
        safe_shutdown(m)


def test_sni_unknown_name_gets_default_certificate(setup, pki):
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    s, _ = greeting_over_tls(setup.implicit_port, ctx, sni="unknown.test")
    with s:
        assert "mail.test" in peer_names(s)
    # No SNI at all (an IP literal): the default certificate too.
    s, _ = greeting_over_tls(setup.implicit_port, ctx, sni=None)
    with s:
        assert "mail.test" in peer_names(s)
    # "*.wild.test" covers one label only.
    s, _ = greeting_over_tls(setup.implicit_port, ctx, sni="a.b.wild.test")
    with s:
        assert "mail.test" in peer_names(s)


def test_tls_min_version(setup, pki):
    tls12_only = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        tls_connect(setup.tls13_port, tls12_only).close()
    s, greeting = greeting_over_tls(setup.tls13_port, client_ctx(pki))
    with s:
        assert s.version() == "TLSv1.3" and greeting.startswith(b"* OK")
    # The default listener (TLS 1.2 minimum) does take that client.
    s, greeting = greeting_over_tls(setup.implicit_port, tls12_only)
    with s:
        assert s.version() == "TLSv1.2" and greeting.startswith(b"* OK")


def test_alpn(setup, pki):
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["imap"])
    s, greeting = greeting_over_tls(setup.implicit_port, ctx)
    with s:
        assert s.selected_alpn_protocol() == "imap"
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2", "imap"])
    s, _ = greeting_over_tls(setup.implicit_port, ctx)
    with s:
        assert s.selected_alpn_protocol() == "imap"
    # Nothing in common: Portico goes on without ALPN (no alert).
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2"])
    s, greeting = greeting_over_tls(setup.implicit_port, ctx)
    with s:
        assert s.selected_alpn_protocol() is None and greeting.startswith(b"* OK")


def resumption_ctx(pki, variant):
    ctx = client_ctx(pki)
    if variant.startswith("tls12"):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if variant == "tls12-session-id":
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def first_session(portico, port, ctx, sni, close_by):
    """One connection; returns its session after closing it by `close_by`:
    "logout" (Portico ends the TLS session), "close_notify" (the client
    sends close_notify, then closes) or "drop" (the client closes the
    socket)."""
    s, greeting = greeting_over_tls(port, ctx, sni=sni)
    client_port = s.getsockname()[1]
    try:
        assert greeting.startswith(b"* OK")
        assert not s.session_reused
        if close_by == "logout":
            r = LineReader(s)
            r.command("z", "LOGOUT")
            # Wait for Portico to close (its close_notify, then EOF).
            assert time_until_closed(s, 5.0)[0] is not None
        session = s.session
        assert session is not None
        if close_by == "close_notify":
            s.unwrap()
    finally:
        s.close()
    # Portico's side of the close (and its SSL_free, which decides whether
    # the session stays cached) is done once it logs the session's end.
    portico.wait_for_session_ends([client_port], timeout=10)
    return session


@pytest.mark.parametrize("variant", ["tls13-ticket", "tls12-ticket", "tls12-session-id", "tls13-sni-other"])
def test_session_resumption(setup, pki, variant):
    ctx = resumption_ctx(pki, variant)
    sni = "other.test" if variant.endswith("other") else "mail.test"
    session = first_session(setup.p, setup.implicit_port, ctx, sni, "logout")
    assert session.has_ticket == (variant != "tls12-session-id")
    s2, greeting = greeting_over_tls(setup.implicit_port, ctx, sni=sni, session=session)
    with s2:
        assert s2.session_reused, variant
        assert greeting.startswith(b"* OK")
        if sni == "other.test":
            assert "other.test" in peer_names(s2)


@pytest.mark.parametrize("close_by", ["close_notify", "drop"])
@pytest.mark.parametrize("variant", ["tls13-ticket", "tls12-ticket"])
def test_ticket_resumption_after_client_close(setup, pki, variant, close_by):
    # Tickets live with the client: how it closed does not matter.
    ctx = resumption_ctx(pki, variant)
    session = first_session(setup.p, setup.implicit_port, ctx, "mail.test", close_by)
    s2, _ = greeting_over_tls(setup.implicit_port, ctx, session=session)
    with s2:
        assert s2.session_reused


@pytest.mark.parametrize("close_by", ["close_notify", "drop"])
def test_session_id_resumption_after_client_close(setup, pki, close_by):
    # The server-side cache must keep a session whose connection the client
    # ended in order (many mail clients just close the socket). Before
    # d9d9427, SSL_free without SSL_SENT_SHUTDOWN evicted it
    # (ssl_clear_bad_session), so only Portico-initiated closes resumed.
    ctx = resumption_ctx(pki, "tls12-session-id")
    session = first_session(setup.p, setup.implicit_port, ctx, "mail.test", close_by)
    assert not session.has_ticket
    s2, _ = greeting_over_tls(setup.implicit_port, ctx, session=session)
    with s2:
        assert s2.session_reused


# --------------------------------------------------------------------------
# abuse of the handshake


def partial_client_hello(pki) -> bytes:
    ctx = client_ctx(pki)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100
    return hello[: len(hello) // 2]


def time_until_closed(sock, limit=5.0) -> tuple:
    """(seconds until EOF/reset, bytes received); limit caps the wait."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        return None, data
    return time.monotonic() - t0, data


@pytest.mark.parametrize("what", ["silent", "partial-hello", "starttls-silent"])
def test_stalled_handshake_closed_at_timeout(setup, pki, what):
    port = setup.port if what.startswith("starttls") else setup.implicit_port
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if what == "starttls-silent":
            r = LineReader(s)
            assert r.readline().startswith(b"* OK")
            assert r.command("a", "STARTTLS")[-1].startswith(b"a OK")
        elif what == "partial-hello":
            s.sendall(partial_client_hello(pki))
        took, data = time_until_closed(s, 5.0)
        assert took is not None, "still open after 5 s (tls_handshake is 1s)"
        assert 0.5 < took < 3.0, took
        assert not data.startswith(b"*"), data
    finally:
        s.close()


def test_plaintext_to_implicit_port_is_closed(setup):
    s = socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=5)
    try:
        s.sendall(b"a CAPABILITY\r\n")
        took, data = time_until_closed(s, 5.0)
        assert took is not None and took < 2.0, took
        assert b"* OK" not in data and b"CAPABILITY" not in data, data
        # What comes back, if anything, is a TLS alert record.
        assert data == b"" or data[:1] == b"\x15", data
    finally:
        s.close()


# --------------------------------------------------------------------------
# backend certificate checks


class StubTlsBackend:
    """A tiny IMAP server with TLS, for what a real Dovecot cannot be made to
    do: present a bad certificate, demand a client certificate, or inject
    plaintext after STARTTLS.

    mode "implicit": TLS from the first byte. mode "starttls": plaintext
    greeting offering STARTTLS; its "OK" to STARTTLS is followed, in the same
    write, by `inject` (a plaintext response an attacker could add).
    After TLS it answers CAPABILITY, LOGIN/AUTHENTICATE (OK if accept_login,
    else NO), ID, NOOP, SELECT, LOGOUT. It records every byte received after
    a successful handshake (`received`), handshake errors, and the client
    certificate's subject CN when client_ca is given (`client_cns`)."""

    CAPS = b"IMAP4rev1 AUTH=PLAIN ID LITERAL+"

    def __init__(self, cert, key, mode="implicit", client_ca=None, inject=b"", accept_login=False,
                 starttls_reply=b"OK Begin TLS"):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(cafile=str(client_ca))
        self.mode = mode
        self.inject = inject
        self.starttls_reply = starttls_reply
        self.plain_received = b""  # before STARTTLS
        self.accept_login = accept_login
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.handshake_errors = []
        self.client_cns = []
        self.logins = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _handshake(self, conn):
        try:
            s = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(str(e))
            conn.close()
            return None
        cert = s.getpeercert()
        if cert:
            self.client_cns += [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        return s

    def _serve(self, conn):
        conn.settimeout(5)
        s = conn
        try:
            if self.mode == "starttls":
                r = LineReader(conn, timeout=5)
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] stub ready\r\n")
                while True:
                    line = r.readline()
                    self.plain_received += line
                    tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                    if rest.upper() == b"STARTTLS":
                        conn.sendall(tag + b" " + self.starttls_reply + b"\r\n" + self.inject)
                        if not self.starttls_reply.startswith(b"OK"):
                            continue
                        break
                    if rest.upper() == b"CAPABILITY":
                        conn.sendall(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + tag + b" OK\r\n")
                    else:
                        conn.sendall(tag + b" BAD plaintext\r\n")
                tls = self._handshake(conn)
                if tls is None:
                    return
                s = tls
            else:
                tls = self._handshake(conn)
                if tls is None:
                    return
                s = tls
                s.sendall(b"* OK [CAPABILITY " + self.CAPS + b"] stub ready\r\n")
            self._imap(s)
        except (ssl.SSLError, OSError, EOFError) as e:
            # TLS 1.3: our side of the handshake completes before the client
            # checked our certificate; its verdict arrives as an alert here.
            self.handshake_errors.append(str(e))
        finally:
            s.close()

    def _imap(self, s):
        s.settimeout(5)
        buf = b""
        while True:
            while b"\r\n" not in buf:
                data = s.recv(65536)
                if not data:
                    return
                self.received += data
                buf += data
            i = buf.index(b"\r\n") + 2
            line, buf = buf[:i], buf[i:]
            m = re.search(rb"\{(\d+)(\+?)\}\r\n$", line)
            while m:  # literals (LOGIN {n+})
                if not m.group(2):
                    s.sendall(b"+ go\r\n")
                n = int(m.group(1))
                while len(buf) < n + 2 or b"\r\n" not in buf[n:]:
                    data = s.recv(65536)
                    if not data:
                        return
                    self.received += data
                    buf += data
                j = buf.index(b"\r\n", n) + 2
                line, buf = line + buf[:j], buf[j:]
                m = re.search(rb"\{(\d+)(\+?)\}\r\n$", line)
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            verb = rest.split(b" ", 1)[0].upper()
            if verb == b"CAPABILITY":
                s.sendall(b"* CAPABILITY " + self.CAPS + b"\r\n" + tag + b" OK done\r\n")
            elif verb in (b"LOGIN", b"AUTHENTICATE"):
                self.logins += 1
                if self.accept_login:
                    s.sendall(tag + b" OK [CAPABILITY " + self.CAPS + b"] Logged in\r\n")
                else:
                    s.sendall(tag + b" NO [AUTHENTICATIONFAILED] stub says no\r\n")
            elif verb == b"ID":
                s.sendall(b"* ID NIL\r\n" + tag + b" OK ID done\r\n")
            elif verb == b"LOGOUT":
                s.sendall(b"* BYE stub\r\n" + tag + b" OK bye\r\n")
                return
            else:
                s.sendall(tag + b" OK " + verb + b" done\r\n")

    def close(self):
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


@pytest.fixture
def stub_factory():
    made = []

    def make(leaf, **kw):
        st = StubTlsBackend(leaf.cert, leaf.key, **kw)
        made.append(st)
        return st

    try:
        yield make
    finally:
        for st in made:
            st.close()


def test_backend_certificate_refused(portico_factory, pki, wild_leaf, tls_backends, stub_factory):
    imp = tls_backends["tlsimp"]
    stubs = {"foreign": stub_factory(pki.foreign), "expired": stub_factory(pki.expired),
             "wrongname": stub_factory(pki.wrong_name)}
    backends = [tls_backend_entry("bad-" + n, st.address, "implicit", pki) for n, st in stubs.items()]
    backends += [
        tls_backend_entry("pin-bad", imp.imaps_address, "implicit", pki, pin_sha256=spki_sha256(pki.other.cert)),
        tls_backend_entry("pin-good", imp.imaps_address, "implicit", pki, pin_sha256=spki_sha256(pki.mail.cert)),
    ]
    users = {"user10": "bad-foreign", "user11": "bad-expired", "user12": "bad-wrongname",
             "user13": "pin-bad", "user14": "pin-good"}
    setup = start_tls_portico(portico_factory, pki, wild_leaf, backends, map_lines=users.items(),
                              connect_retries=0)
    p = setup.p
    ctx = client_ctx(pki)
    expect_log = {
        "user10": "certificate verify failed: unable to get local issuer certificate",
        "user11": "certificate verify failed: certificate has expired",
        "user12": "certificate verify failed: hostname mismatch",
        "user13": "pin mismatch",
    }
    for user, needle in expect_log.items():
        since = len(p.lines())
        m = IMAP4SSLNamed(setup.implicit_port, "mail.test", ctx)
        try:
            with pytest.raises(imaplib.IMAP4.error) as e:
                m.login(user, PASSWORD)
            assert "[UNAVAILABLE]" in str(e.value), (user, e.value)
        finally:
            safe_shutdown(m)
        hits = p.wait_for_line(needle, since=since, timeout=5)
        assert users[user] in hits[0], hits
    for name, st in stubs.items():
        assert st.received == b"", (name, st.received[:200])  # no LOGIN ever reached them
        assert st.handshake_errors, name
    # The right pin is accepted, and the login really reaches the backend.
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", ctx)
    try:
        assert m.login("user14", PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    finally:
        safe_shutdown(m)
    assert wait_until(lambda: dovecot_tls_login(imp, "user14"), 3.0)


def test_backend_bad_certificate_falls_over_to_next(portico_factory, pki, wild_leaf, tls_backends,
                                                     stub_factory):
    st = stub_factory(pki.foreign)
    imp = tls_backends["tlsimp"]
    backends = [tls_backend_entry("bad-foreign", st.address, "implicit", pki),
                tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki)]
    setup = start_tls_portico(portico_factory, pki, wild_leaf, backends,
                              map_lines=[("user15", "bad-foreign")], connect_retries=2)
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", client_ctx(pki))
    try:
        assert m.login("user15", PASSWORD)[0] == "OK"
        m.logout()
    finally:
        safe_shutdown(m)
    setup.p.wait_for_line(re.compile(r"bad-foreign.*certificate verify failed"), timeout=5)
    assert st.received == b""
    assert wait_until(lambda: dovecot_tls_login(imp, "user15"), 3.0)


def test_backend_starttls_certificate_refused(portico_factory, pki, wild_leaf, tls_backends):
    # A STARTTLS backend whose certificate does not carry the expected name.
    st = tls_backends["tlsstart"]
    backends = [tls_backend_entry("tlsstart", st.address, "starttls", pki, server_name="nomatch.test")]
    setup = start_tls_portico(portico_factory, pki, wild_leaf, backends, connect_retries=0)
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", client_ctx(pki))
    try:
        with pytest.raises(imaplib.IMAP4.error) as e:
            m.login("user16", PASSWORD)
        assert "[UNAVAILABLE]" in str(e.value)
    finally:
        safe_shutdown(m)
    setup.p.wait_for_line("certificate verify failed: hostname mismatch", timeout=5)
    assert not dovecot_tls_login(st, "user16")


# --------------------------------------------------------------------------
# certificate reload


def test_certificate_reload_keeps_open_sessions(portico_factory, pki, wild_leaf, tls_backends):
    imp = tls_backends["tlsimp"]
    workdir_certs = Path(pki.root) / ("reload-%s" % uuid.uuid4().hex[:8])
    workdir_certs.mkdir()
    cert, key = workdir_certs / "live.pem", workdir_certs / "live.key"

    def install(leaf_cert: bytes, leaf_key: bytes):
        for path, data in ((cert, leaf_cert), (key, leaf_key)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o600)  # a key must be its owner's alone, or the config is refused
            os.replace(tmp, path)

    install(pki.mail.cert.read_bytes(), pki.mail.key.read_bytes())
    setup = start_tls_portico(portico_factory, pki, wild_leaf,
                              [tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki)],
                              cert=cert, key=key)
    p = setup.p
    ctx = client_ctx(pki)

    # A logged-in TLS session that stays open across the reloads.
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", ctx)
    try:
        assert peer_serial(m.sock) == pki.mail.serial
        assert m.login("user20", PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"

        fresh = pki.issue("mail.test", dns=["mail.test"], ips=["127.0.0.1"])
        assert fresh.serial != pki.mail.serial
        install(fresh.cert.read_bytes(), fresh.key.read_bytes())
        since = len(p.lines())
        os.kill(p.pid, signal.SIGHUP)
        p.wait_for_line("reload: done", since=since, timeout=10, fail="reload: failed")

        assert m.noop()[0] == "OK"
        marker = new_marker("reload")
        assert m.append("INBOX", None, None, make_message("reload", marker=marker))[0] == "OK"
        typ, data = m.search(None, "HEADER", "X-Portico-Marker", marker)
        assert typ == "OK" and data[0].split(), data
        s, greeting = greeting_over_tls(setup.implicit_port, ctx)
        with s:
            assert peer_serial(s) == fresh.serial and greeting.startswith(b"* OK")
        # STARTTLS listener too.
        m2 = imap_starttls(setup.port, ctx)
        try:
            assert peer_serial(m2.sock) == fresh.serial
        finally:
            safe_shutdown(m2)

        # Garbage where the certificate was: the reload fails, the last good
        # certificate stays in use, the open session goes on.
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        since = len(p.lines())
        os.kill(p.pid, signal.SIGHUP)
        p.wait_for_line("reload: failed", since=since, timeout=10)
        assert not any("reload: done" in l for l in p.lines()[since:])
        s, greeting = greeting_over_tls(setup.implicit_port, ctx)
        with s:
            assert peer_serial(s) == fresh.serial and greeting.startswith(b"* OK")
        assert m.noop()[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    finally:
        safe_shutdown(m)
    assert p.running()


# --------------------------------------------------------------------------
# more backend TLS options


def login_via(setup, pki, user):
    """LOGIN through the implicit listener; (typ, text) without raising."""
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", client_ctx(pki))
    try:
        try:
            typ, data = m.login(user, PASSWORD)
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        except imaplib.IMAP4.error as e:
            typ, text = "NO", str(e)
        if typ == "OK":
            assert m.noop()[0] == "OK"
            m.logout()
        return typ, text
    finally:
        safe_shutdown(m)


def test_backend_client_certificate(portico_factory, pki, wild_leaf, stub_factory):
    client = pki.issue("portico-client")
    needs_cert = stub_factory(pki.mail, client_ca=pki.ca, accept_login=True)
    backends = [
        tls_backend_entry("with-cert", needs_cert.address, "implicit", pki,
                          client_cert=str(client.cert), client_key=str(client.key)),
        tls_backend_entry("without-cert", needs_cert.address, "implicit", pki),
    ]
    setup = start_tls_portico(portico_factory, pki, wild_leaf, backends, connect_retries=0,
                              map_lines=[("user30", "with-cert"), ("user31", "without-cert")])
    typ, text = login_via(setup, pki, "user30")
    assert typ == "OK", text
    # Every handshake presented the configured certificate (a health probe
    # to this backend may have made one more, with the same certificate).
    assert needs_cert.client_cns and set(needs_cert.client_cns) == {"portico-client"}, needs_cert.client_cns
    assert needs_cert.logins == 1
    typ, text = login_via(setup, pki, "user31")
    assert typ == "NO" and "[UNAVAILABLE]" in text, text
    assert needs_cert.logins == 1  # the password never went to it


def test_backend_verify_false_with_pin_accepts_an_unverifiable_certificate(portico_factory, pki, wild_leaf,
                                                                          stub_factory):
    # verify = false alone is refused by the config (any certificate would
    # do); with pin_sha256 the pin is the check: a certificate from no
    # trusted CA is accepted because its key matches.
    foreign = stub_factory(pki.foreign, accept_login=True)
    setup = start_tls_portico(portico_factory, pki, wild_leaf,
                              [tls_backend_entry("noverify", foreign.address, "implicit", pki, verify=False,
                                                 pin_sha256=spki_sha256(pki.foreign.cert))],
                              connect_retries=0)
    typ, text = login_via(setup, pki, "user32")
    assert typ == "OK", text
    assert foreign.logins == 1


def test_backend_ca_directory(portico_factory, pki, wild_leaf, tls_backends, tmp_path):
    # `ca` may name an OpenSSL hashed directory (c_rehash layout).
    ca_dir = tmp_path / "cadir"
    ca_dir.mkdir()
    h = subprocess.run(["openssl", "x509", "-in", str(pki.ca), "-noout", "-subject_hash"],
                       stdout=subprocess.PIPE, check=True, timeout=30).stdout.decode().strip()
    (ca_dir / ("%s.0" % h)).write_bytes(pki.ca.read_bytes())
    imp = tls_backends["tlsimp"]
    setup = start_tls_portico(portico_factory, pki, wild_leaf,
                              [tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki, ca=str(ca_dir))],
                              connect_retries=0)
    typ, text = login_via(setup, pki, "user33")
    assert typ == "OK", text
    # A directory without our CA refuses the same backend.
    (ca_dir / ("%s.0" % h)).unlink()
    setup2 = start_tls_portico(portico_factory, pki, wild_leaf,
                               [tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki, ca=str(ca_dir))],
                               connect_retries=0)
    typ, text = login_via(setup2, pki, "user33")
    assert typ == "NO" and "[UNAVAILABLE]" in text, text
    setup2.p.wait_for_line("certificate verify failed", timeout=5)


def test_backend_starttls_response_injection_dropped(portico_factory, pki, wild_leaf, stub_factory):
    # The backend's STARTTLS OK arrives with plaintext appended in the same
    # segment (what a man in the middle would add): none of it may be taken
    # as a response from inside TLS.
    inject = (b"* OK [ALERT] INJECTED-ALERT\r\n"
              b"* CAPABILITY IMAP4rev1 AUTH=PLAIN INJECTED-CAP\r\n"
              b"* BYE INJECTED-BYE\r\n")
    st = stub_factory(pki.mail, mode="starttls", inject=inject, accept_login=True)
    setup = start_tls_portico(portico_factory, pki, wild_leaf,
                              [tls_backend_entry("stub", st.address, "starttls", pki)], connect_retries=0)
    s, greeting = greeting_over_tls(setup.implicit_port, client_ctx(pki))
    seen = [greeting]
    try:
        r = LineReader(s)
        lines = r.command("a", 'LOGIN user34 "%s"' % PASSWORD)
        seen += lines
        assert lines[-1].startswith(b"a OK"), lines
        for tag, cmd in (("b", "CAPABILITY"), ("c", "NOOP"), ("d", "LOGOUT")):
            lines = r.command(tag, cmd)
            seen += lines
            assert lines[-1].startswith(tag.encode() + b" OK"), lines
    finally:
        s.close()
    assert st.logins == 1  # the login did go over TLS to the stub
    assert not any(b"INJECTED" in l for l in seen), seen


def s_client_session(port, pki, version, steps, timeout=20):
    """Runs `openssl s_client` with its command letters enabled and feeds it
    `steps`, each (bytes to type, regex to wait for in stdout+stderr before
    the next step). Waiting keeps a command letter alone at the start of
    one read, which is how s_client recognises it. Returns (stdout, stderr)."""
    pr = subprocess.Popen(
        ["timeout", str(timeout), "openssl", "s_client", version, "-connect", "127.0.0.1:%d" % port,
         "-CAfile", str(pki.ca), "-verify_return_error", "-servername", "mail.test"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = [], []

    def pump(stream, sink):
        for chunk in iter(lambda: stream.read1(65536), b""):
            sink.append(chunk)

    threads = [threading.Thread(target=pump, args=(pr.stdout, out), daemon=True),
               threading.Thread(target=pump, args=(pr.stderr, err), daemon=True)]
    for t in threads:
        t.start()

    def text():
        return (b"".join(out) + b"\n" + b"".join(err)).decode(errors="replace")

    try:
        assert wait_until(lambda: re.search(r"^\* OK", text(), re.M), 10), text()[-2000:]
        for data, expect in steps:
            pr.stdin.write(data)
            pr.stdin.flush()
            assert wait_until(lambda: re.search(expect, text(), re.M), 10), (expect, text()[-2000:])
    except BrokenPipeError:
        pass
    finally:
        try:
            pr.stdin.close()
        except BrokenPipeError:
            pass
        try:
            pr.wait(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait(timeout=5)
        for t in threads:
            t.join(timeout=5)
    return b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


def test_key_update_keeps_session(setup, pki):
    # "K": a TLS 1.3 KeyUpdate that also asks Portico to update its keys;
    # "k": one that does not.
    out, err = s_client_session(setup.implicit_port, pki, "-tls1_3", [
        (b"a NOOP\r\n", r"^a OK"),
        (b"K\n", r"KEYUPDATE"),
        (b"b NOOP\r\n", r"^b OK"),
        (b"k\n", r"KEYUPDATE(.|\n)*KEYUPDATE"),
        (b"c NOOP\r\n", r"^c OK"),
    ])
    assert err.count("KEYUPDATE") == 2, err
    for tag in ("a", "b", "c"):
        assert re.search(r"^%s OK" % tag, out, re.M), (out[-1500:], err)


def test_renegotiation_refused(setup, pki):
    out, err = s_client_session(setup.implicit_port, pki, "-tls1_2", [
        (b"a NOOP\r\n", r"^a OK"),
        (b"R\n", r"no renegotiation"),
    ])
    assert "RENEGOTIATING" in err and "no renegotiation" in err, err
    # s_client gave up on the connection: nothing after the refusal.
    assert not re.search(r"^b OK", out, re.M), out[-1500:]


def test_backend_starttls_refused_no_plaintext_fallback(portico_factory, pki, wild_leaf, stub_factory):
    st = stub_factory(pki.mail, mode="starttls", starttls_reply=b"NO [UNAVAILABLE] not today",
                      accept_login=True)
    setup = start_tls_portico(portico_factory, pki, wild_leaf,
                              [tls_backend_entry("stub", st.address, "starttls", pki)], connect_retries=0)
    typ, text = login_via(setup, pki, "user35")
    assert typ == "NO" and "[UNAVAILABLE]" in text, text
    setup.p.wait_for_line("STARTTLS refused", timeout=5)
    assert b"STARTTLS" in st.plain_received
    assert b"LOGIN" not in st.plain_received.upper() and b"AUTHENTICATE" not in st.plain_received.upper()
    assert PASSWORD.encode() not in st.plain_received


def test_backend_silent_during_tls_handshake(portico_factory, pki, wild_leaf):
    # A backend that accepts TCP and never answers the ClientHello: the
    # handshake timeout (1s here) ends the attempt, not the 5s connect one.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the kernel completes the TCP handshake
    try:
        address = "127.0.0.1:%d" % silent.getsockname()[1]
        setup = start_tls_portico(portico_factory, pki, wild_leaf,
                                  [tls_backend_entry("silent", address, "implicit", pki)], connect_retries=0)
        t0 = time.monotonic()
        typ, text = login_via(setup, pki, "user36")
        took = time.monotonic() - t0
        assert typ == "NO" and "[UNAVAILABLE]" in text, text
        assert took < 3.5, took
        setup.p.wait_for_line(re.compile(r"silent.*(TLS handshake timeout|timed out|timeout)"), timeout=5)
    finally:
        silent.close()


def vm_rss_kib(pid):
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/%d/status" % pid).read_text(), re.M)
    return int(m.group(1))


def read_fetch_body(s, r, tag: bytes) -> bytes:
    """Reads one FETCH response's literal and its tagged OK."""
    body = None
    while True:
        line = r.readline()
        lit = re.search(rb"\{(\d+)\}\r\n$", line)
        if lit:
            n = int(lit.group(1))
            parts, have = [r.buf], len(r.buf)
            while have < n:
                chunk = s.recv(1 << 20)
                assert chunk, "closed inside the literal"
                parts.append(chunk)
                have += len(chunk)
            data = b"".join(parts)
            body, r.buf = data[:n], data[n:]
            continue
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), line
            return body


def test_tls_backpressure_slow_client_both_sides_tls(setup, pki, tls_backends):
    # A TLS client that asks for 3 x 10 MiB and does not read for a while:
    # Portico must stop reading its TLS backend instead of buffering 30 MiB,
    # then deliver every byte intact once the client reads (pause/resume on
    # both TLS transports, including plaintext already decrypted by OpenSSL).
    marker = new_marker("bp")
    msg = big_message(marker)
    m = IMAP4SSLNamed(setup.implicit_port, "mail.test", client_ctx(pki))
    try:
        assert m.login(USER_IMPLICIT, PASSWORD)[0] == "OK"
        assert m.append("INBOX", None, None, msg)[0] == "OK"
        m.logout()
    finally:
        safe_shutdown(m)
    s, _ = greeting_over_tls(setup.implicit_port, client_ctx(pki))
    try:
        r = LineReader(s, timeout=30)
        assert r.command("a", 'LOGIN %s "%s"' % (USER_IMPLICIT, PASSWORD))[-1].startswith(b"a OK")
        assert r.command("b", "SELECT INBOX")[-1].startswith(b"b OK")
        lines = r.command("c", "UID SEARCH HEADER X-Portico-Marker %s" % marker)
        uid = int(re.search(rb"\* SEARCH ([\d ]+)", b"".join(lines)).group(1).split()[-1])
        rss0 = vm_rss_kib(setup.p.pid)
        s.sendall(b"".join(b"f%d UID FETCH %d (BODY.PEEK[])\r\n" % (i, uid) for i in range(3)))
        peak = rss0
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            peak = max(peak, vm_rss_kib(setup.p.pid))
            time.sleep(0.1)
        grew_mib = (peak - rss0) / 1024
        for i in range(3):
            body = read_fetch_body(s, r, b"f%d" % i)
            assert body is not None and sha256(body) == sha256(msg), i
        print("portico VmRSS growth while the client did not read: %.1f MiB" % grew_mib)
        if sanitizer_of(setup.p.binary) == "asan":
            # Every byte arrived intact (checked above); the RSS bound measures
            # the release allocator, not ASan's quarantine and redzones.
            pytest.skip("RSS bound not checked under AddressSanitizer (grew %.1f MiB)" % grew_mib)
        assert grew_mib < 12, "Portico grew by %.1f MiB while the client was not reading" % grew_mib
    finally:
        s.close()


# --------------------------------------------------------------------------
# health probes and TLS


def test_health_probes_respect_tls(portico_factory, pki, wild_leaf, tls_backends, tmp_path):
    import urllib.error
    import urllib.request

    imp, st = tls_backends["tlsimp"], tls_backends["tlsstart"]
    secret = tmp_path / "probe.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    probes = ("ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe")
    monitors = ("ImapProxyTestMonitor", "ImapCTPMonitor", "ImapSelfTestMonitor", "ImapDeepTestMonitor")
    health = {
        "probe": {n: {"interval": "1s", "timeout": "1s", "retries": 0} for n in probes},
        "monitor": {n: {"unhealthy_after": 2, "healthy_after": 2} for n in monitors},
    }
    setup = start_tls_portico(
        portico_factory, pki, wild_leaf,
        [tls_backend_entry("tlsimp", imp.imaps_address, "implicit", pki,
                           probe_user="user40", probe_password_file=str(secret)),
         tls_backend_entry("tlsstart", st.address, "starttls", pki,
                           probe_user="user41", probe_password_file=str(secret))],
        extra={"health": health})
    p = setup.p
    sets = {"ImapProxyTestProbe": "IMAP.Proxy", "ImapCTPProbe": "IMAP",
            "ImapSelfTestProbe": "IMAP.Protocol", "ImapDeepTestProbe": "IMAP.Protocol"}

    def rounds_done():
        # Every probe of every target has run at least 3 times: enough for
        # the monitors (unhealthy_after 2) to have acted on plaintext probes.
        for probe, hs in sets.items():
            url = "http://127.0.0.1:%d/probes/%s/%s" % (p.status_port, hs, probe)
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.loads(r.read().decode())["Targets"]
            if not targets or any(len(t["Results"]) < 3 for t in targets):
                return False
        return True

    deadline = time.monotonic() + 20
    while not rounds_done():
        assert time.monotonic() < deadline, "probes did not run 3 rounds within 20 s"
        time.sleep(0.2)  # poll interval of a bounded wait, not a synchronisation
    problems = [l for l in p.lines() if "drained by responder" in l or "out of rotation" in l]
    try:
        ready = urllib.request.urlopen("http://127.0.0.1:%d/readyz" % p.status_port, timeout=5).status
    except urllib.error.HTTPError as e:
        ready = e.code
    plaintext_probe_logins = [l for l in st.log_text().splitlines()
                              if "Login: user=<user41>" in l and ", TLS," not in l]
    assert not problems, problems
    assert ready == 200
    assert not plaintext_probe_logins, plaintext_probe_logins[:3]
