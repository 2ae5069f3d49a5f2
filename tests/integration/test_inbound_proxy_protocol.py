"""Inbound PROXY protocol (issue 11): real HAProxy in front of Portico in
front of real Dovecot, all on loopback.

The client connects from 127.0.0.2 (or .3) to HAProxy, HAProxy from
127.0.0.1 to Portico with `send-proxy` (v1) or `send-proxy-v2`, to a plain
or an implicit-TLS listener with proxy_protocol = true. Portico then tells
Dovecot who the client is, by PROXY v2 to Dovecot's `haproxy = yes`
listener or by the ID command's x-originating-ip (forward_id). Dovecot's
login line shows the address it was told (rip/rport) beside the connection's
own (real_rip): the client's must arrive, not HAProxy's, and Portico's
sessions list, session-end line and per-IP limit must use it too.

Refusals use direct connections with hand-written bytes: no header (cut by
the header timeout, timeouts.tls_handshake = 1s here), garbage, a header
from a peer outside trusted_networks, and a header sent a byte at a time.
None of them may see a greeting.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from harness import PASSWORD, Dovecot, free_port, quote, read_protocol_log, wait_until
from haproxy_harness import HAProxy, connect_from, wait_closed

CLIENT_IP = "127.0.0.2"
TRUSTED = ["127.0.0.0/8"]


@pytest.fixture(scope="module")
def dovecot():
    d = Dovecot("inb", haproxy=True)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def haproxy():
    made = []

    def make():
        lb = HAProxy()
        made.append(lb)
        return lb

    try:
        yield make
    finally:
        for lb in made:
            lb.cleanup()


def proxy_listener(port, trusted=TRUSTED, **extra):
    entry = {"address": "127.0.0.1:%d" % port, "proxy_protocol": True,
             "trusted_networks": trusted}
    entry.update(extra)
    return entry


def node_config(dovecot, listeners, backend="proxy", **extra):
    """Portico in front of `dovecot`, told the client by PROXY v2 or by ID."""
    if backend == "proxy":
        b = {"name": "inb", "address": "127.0.0.1:%d" % dovecot.haproxy_port,
             "proxy_protocol": True, "forward_id": False}
    else:
        b = {"name": "inb", "address": dovecot.address, "proxy_protocol": False,
             "forward_id": True}
    cfg = {"listen": listeners, "backend": [dict(b, weight=1)],
           "timeouts": {"tls_handshake": "1s"}}
    cfg.update(extra)
    return cfg


def read_line(sock) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def command(sock, tag, text) -> bytes:
    sock.sendall(("%s %s\r\n" % (tag, text)).encode())
    while True:
        line = read_line(sock)
        if not line or line.startswith(tag.encode() + b" "):
            return line


def dovecot_login_fields(dovecot, user) -> dict:
    pattern = re.compile(r"imap-login: Info: Login: user=<%s>," % re.escape(user))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [l for l in dovecot.log_text().splitlines() if pattern.search(l)]
        if lines:
            return dict(re.findall(r"(\w+)=<?([^,\s>]+)", lines[-1]))
        time.sleep(0.05)
    raise AssertionError("no Dovecot login line for %s\n%s" % (user, dovecot.log_text()[-2000:]))


@pytest.mark.parametrize("send_proxy,tls,backend,user", [
    ("v1", False, "proxy", "alice"),
    ("v2", False, "proxy", "bob"),
    ("v2", True, "proxy", "carol"),
    ("v2", False, "id", "dave"),
])
def test_client_address_through_haproxy(portico_factory, haproxy, pki, dovecot, send_proxy, tls,
                                        backend, user):
    port = free_port()
    extra = {"tls": "implicit", "cert": str(pki.mail.cert), "key": str(pki.mail.key)} if tls else {}
    cfg = node_config(dovecot, [proxy_listener(port, **extra)], backend)
    cfg["protocol_log"] = {"enabled": True}
    p = portico_factory([], config=cfg)
    lb = haproxy()
    lb_port = lb.add_frontend("imap", [("127.0.0.1", port)], send_proxy=send_proxy)
    lb.start()

    raw = connect_from(CLIENT_IP, lb_port)
    client_port = raw.getsockname()[1]
    sock = raw
    if tls:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        sock = ctx.wrap_socket(raw, server_hostname="mail.test")
    try:
        greeting = read_line(sock)
        assert greeting.startswith(b"* OK"), (greeting, p.log_tail())
        tagged = command(sock, "a1", "LOGIN %s %s" % (quote(user), quote(PASSWORD)))
        assert tagged.startswith(b"a1 OK"), (tagged, p.log_tail(), dovecot.log_text()[-2000:])

        # While the session is open: the admin socket names the client.
        sessions = p.admin("sessions")["sessions"]
        clients = [s["client"] for s in sessions if s["user"] == user]
        assert clients == ["%s:%d" % (CLIENT_IP, client_port)], sessions
        assert command(sock, "a2", "LOGOUT").startswith(b"a2 OK")
    finally:
        sock.close()

    # Dovecot was told the client, not HAProxy (127.0.0.1) and not Portico.
    fields = dovecot_login_fields(dovecot, user)
    assert fields.get("rip") == CLIENT_IP, fields
    assert fields.get("real_rip") == "127.0.0.1", fields
    if backend == "proxy":
        assert fields.get("rport") == str(client_port), fields
    # Portico's own log lines for the session carry it as well.
    p.wait_for_line(re.compile(r"login user=%s backend=inb client=%s:%d$"
                               % (user, re.escape(CLIENT_IP), client_port)))
    p.wait_for_line(re.compile(r"session end id=\w+ client=%s:%d user=%s "
                               % (re.escape(CLIENT_IP), client_port, user)))
    # And the protocol log's client column.
    def mine(rows):
        return [r for r in rows if r["user"] == user]
    assert wait_until(lambda: mine(read_protocol_log(p.workdir / "log")), 5)
    addresses = {r["cIp"] for r in mine(read_protocol_log(p.workdir / "log"))}
    assert addresses == {"%s:%d" % (CLIENT_IP, client_port)}, addresses


def test_per_ip_limit_counts_the_client_behind_haproxy(portico_factory, haproxy, dovecot):
    port = free_port()
    cfg = node_config(dovecot, [proxy_listener(port)])
    cfg["limits"] = {"max_connections_per_ip": 1}
    p = portico_factory([], config=cfg)
    lb = haproxy()
    lb_port = lb.add_frontend("imap", [("127.0.0.1", port)], send_proxy="v2")
    lb.start()
    first = connect_from("127.0.0.2", lb_port)
    other = connect_from("127.0.0.3", lb_port)
    second = connect_from("127.0.0.2", lb_port)
    try:
        # All three reach Portico from HAProxy's 127.0.0.1; only the header
        # tells them apart. HAProxy may forward the two 127.0.0.2 connections
        # in either order, so exactly one of them is let in.
        assert read_line(other).startswith(b"* OK")
        greetings = [read_line(s) for s in (first, second)]
        assert sum(g.startswith(b"* OK") for g in greetings) == 1, greetings
        assert b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n" in greetings, greetings
        p.wait_for_line(re.compile(r"connection from 127\.0\.0\.2:\d+ refused: max_connections_per_ip"))
    finally:
        for s in (first, other, second):
            s.close()


def test_no_header_is_cut_by_the_timeout_without_greeting(portico_factory, dovecot):
    port = free_port()
    p = portico_factory([], config=node_config(dovecot, [proxy_listener(port)]))
    sock = connect_from("127.0.0.1", port)  # trusted, but says nothing
    try:
        data, took = wait_closed(sock, 5)
    finally:
        sock.close()
    assert data == b"", data
    assert 0.8 <= took <= 3.0, took
    p.wait_for_line(re.compile(r"proxy_protocol: connection from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:%d "
                               r"closed without greeting: no PROXY header within 1000 ms" % port))


def test_garbage_is_refused_at_once_and_the_log_is_throttled(portico_factory, dovecot):
    port = free_port()
    p = portico_factory([], config=node_config(dovecot, [proxy_listener(port)]))
    socks = [connect_from("127.0.0.1", port) for _ in range(5)]
    try:
        for s in socks:
            s.sendall(b"a1 CAPABILITY\r\n")  # a client that skipped the balancer
        for s in socks:
            data, took = wait_closed(s, 3)
            assert data == b"" and took < 0.9, (data, took)
    finally:
        for s in socks:
            s.close()
    # One line with the reason, the rest counted within about a second.
    lines = p.wait_for_line("closed without greeting: bad PROXY header (not_proxy after 1 bytes)")
    assert len(lines) == 1, lines
    held = p.wait_for_line(re.compile(r"proxy_protocol: \d+ more connections? closed"), timeout=5)
    total = sum(int(re.search(r"proxy_protocol: (\d+) more", l).group(1)) for l in held)
    assert total == 4, held


V1_HEADER = b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 143\r\n"


def test_untrusted_peer_is_refused_until_reload_trusts_it(portico_factory, dovecot):
    port = free_port()
    cfg = node_config(dovecot, [proxy_listener(port, trusted=["10.0.0.0/8"])])
    p = portico_factory([], config=cfg)
    sock = connect_from("127.0.0.1", port)
    try:
        sock.sendall(V1_HEADER)  # a well-formed header, from the wrong peer
        data, _ = wait_closed(sock, 3)
    finally:
        sock.close()
    assert data == b""
    p.wait_for_line(re.compile(r"proxy_protocol: connection from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:%d "
                               r"closed without greeting: peer not in trusted_networks" % port))

    # A reload that breaks the pairing is refused as a whole, with the reason.
    broken = node_config(dovecot, [proxy_listener(port, trusted=[])])
    p.config = broken
    p.write_config()
    since = len(p.lines())
    os.kill(p.pid, signal.SIGHUP)
    p.wait_for_line("'proxy_protocol = true' needs 'trusted_networks'", since=since)
    p.wait_for_line("reload: failed, keeping the running configuration", since=since)
    # --check-config says the same of that file.
    check = subprocess.run([p.binary, "--check-config", str(p.config_path)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 1 and "needs 'trusted_networks'" in check.stderr, check

    # SIGHUP: the listener's change is named and applies to new connections.
    p.reload(node_config(dovecot, [proxy_listener(port, trusted=["127.0.0.0/8", "10.0.0.0/8"])]))
    p.wait_for_line("trusted_networks [10.0.0.0/8] -> [127.0.0.0/8 10.0.0.0/8]")
    sock = connect_from("127.0.0.1", port)
    try:
        sock.sendall(V1_HEADER)
        assert read_line(sock).startswith(b"* OK")
        clients = [s["client"] for s in p.admin("sessions")["sessions"]]
        assert clients == ["192.0.2.1:5555"], clients
    finally:
        sock.close()


def test_slowloris_header_is_cut_by_the_timeout(portico_factory, dovecot):
    port = free_port()
    p = portico_factory([], config=node_config(dovecot, [proxy_listener(port)]))
    sock = connect_from("127.0.0.1", port)
    sock.settimeout(0.1)
    start = time.monotonic()
    received = b""
    closed_after = None
    try:
        for byte in V1_HEADER[:-1]:  # never the final LF
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(4096)  # paces the drip (0.1 s) and sees the close
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                chunk = b""
            received += chunk
            if not chunk:
                closed_after = time.monotonic() - start
                break
    finally:
        sock.close()
    assert received == b""
    assert closed_after is not None and 0.8 <= closed_after <= 3.0, closed_after
    p.wait_for_line(re.compile(r"closed without greeting: PROXY header not complete within 1000 ms "
                               r"\(\d+ bytes\)"))


def tls_over(sock, ctx, first: bytes, timeout: float = 5.0) -> ssl.SSLObject:
    """A TLS client over `sock` whose ClientHello goes out in one send with
    `first` in front of it (as a balancer's header and the client's first
    segment can arrive together)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.test")
    pending = first
    deadline = time.monotonic() + timeout
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        pending += outgoing.read()
        if pending:
            sock.sendall(pending)
            pending = b""
        if done:
            return tls, incoming, outgoing
        assert time.monotonic() < deadline, "TLS handshake did not finish"
        data = sock.recv(65536)
        assert data, "closed during the TLS handshake"
        incoming.write(data)


def tls_read_line(sock, tls, incoming) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        try:
            data += tls.read(1)
        except ssl.SSLWantReadError:
            chunk = sock.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
    return data


@pytest.mark.parametrize("tls", [False, True])
def test_bytes_sent_with_the_header_are_not_lost(portico_factory, pki, dovecot, tls):
    port = free_port()
    extra = {"tls": "implicit", "cert": str(pki.mail.cert), "key": str(pki.mail.key)} if tls else {}
    p = portico_factory([], config=node_config(dovecot, [proxy_listener(port, **extra)]))
    sock = connect_from("127.0.0.1", port)
    try:
        if not tls:
            # Header and a pipelined command in one segment.
            sock.sendall(V1_HEADER + b"a1 CAPABILITY\r\n")
            assert read_line(sock).startswith(b"* OK")
            assert read_line(sock).startswith(b"* CAPABILITY ")
            assert read_line(sock).startswith(b"a1 OK")
        else:
            # Header and ClientHello in one segment.
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            obj, incoming, outgoing = tls_over(sock, ctx, V1_HEADER)
            assert tls_read_line(sock, obj, incoming).startswith(b"* OK")
        clients = [s["client"] for s in p.admin("sessions")["sessions"]]
        assert clients == ["192.0.2.1:5555"], clients
    finally:
        sock.close()


@pytest.mark.parametrize("tls", [False, True])
def test_proxy_test_probe_reaches_a_proxy_protocol_listener(portico_factory, pki, dovecot, tls):
    """Portico's own ImapProxyTestProbe dials its listener: behind a load
    balancer it sends a PROXY v2 LOCAL header first (before the ClientHello
    with implicit TLS), else every node would take itself out of rotation."""
    port = free_port()
    extra = {"tls": "implicit", "cert": str(pki.mail.cert), "key": str(pki.mail.key)} if tls else {}
    cfg = node_config(dovecot, [proxy_listener(port, **extra)])
    cfg["health"] = {"probe": {"ImapProxyTestProbe": {"interval": "300ms", "timeout": "2s",
                                                      "retries": 0}}}
    p = portico_factory([], config=cfg)
    url = "http://127.0.0.1:%d/probes/IMAP.Proxy/ImapProxyTestProbe?target=" % p.status_port
    results = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(results) < 2:
        with urllib.request.urlopen(url, timeout=5) as r:
            results = json.loads(r.read())["Targets"][0]["Results"]
        time.sleep(0.1)
    assert len(results) >= 2, results
    assert all(r["ResultType"] == "Succeeded" for r in results), results
    assert p.count_lines("closed without greeting") == 0, p.log_tail()


def test_haproxy_checks_take_a_dead_node_out(portico_factory, haproxy, dovecot):
    """The fleet topology's front: HAProxy over two nodes, checking each
    node's /readyz; a killed node leaves the rotation and every new client
    lands on the other, with its own address."""
    nodes = []
    for _ in range(2):
        port = free_port()
        nodes.append(portico_factory([], config=node_config(dovecot, [proxy_listener(port)]),
                                     listen_port=port))
    lb = haproxy()
    lb_port = lb.add_frontend("imap", [("127.0.0.1", n.port, n.status_port) for n in nodes],
                              send_proxy="v2", check=True)
    lb.start()
    nodes[0].kill()

    def greets() -> bool:
        s = connect_from(CLIENT_IP, lb_port, timeout=2)
        try:
            return read_line(s).startswith(b"* OK")
        except OSError:
            return False
        finally:
            s.close()

    # Until HAProxy notices, a client may land on the dead node.
    assert wait_until(lambda: all(greets() for _ in range(4)), 10), lb.log_text()[-2000:]
    ports = []
    for _ in range(3):
        s = connect_from(CLIENT_IP, lb_port)
        try:
            assert read_line(s).startswith(b"* OK")
            ports.append(s.getsockname()[1])
            clients = [x["client"] for x in nodes[1].admin("sessions")["sessions"]]
            assert "%s:%d" % (CLIENT_IP, ports[-1]) in clients, clients
        finally:
            s.close()
