"""PROXY protocol v2 towards real Dovecot backends, with every backend TLS mode.

Dovecot listens with `haproxy = yes` (harness Dovecot(haproxy=True)): it
reads a PROXY header as the first bytes of each connection, before its
greeting and before any TLS handshake, exactly as HAProxy and nginx send it.
A header sent anywhere else (inside TLS, after the greeting) makes Dovecot
drop the connection, so the login fails.

The client connects from 127.0.0.2, Portico from 127.0.0.1: Dovecot's login
line then shows the header's addresses (rip/rport = the client's) beside the
connection's own (real_rip = Portico's), which proves the header arrived and
was believed.
"""

import re
import socket

import pytest

from harness import PASSWORD, Dovecot, ImapConn, quote, wait_until

CLIENT_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def haproxy_dovecot(pki):
    d = Dovecot("pxy", tls={"cert": pki.mail.cert, "key": pki.mail.key, "required": False},
                haproxy=True)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def connect_from(ip: str, port: int, timeout: float = 10.0) -> ImapConn:
    """An ImapConn to 127.0.0.1:port whose source address is `ip`."""
    conn = ImapConn.__new__(ImapConn)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((ip, 0))
    sock.connect(("127.0.0.1", port))
    conn.sock = sock
    conn.buf = b""
    conn._tagn = 0
    conn.greeting = conn.readline()
    return conn


@pytest.mark.parametrize("mode", ["none", "starttls", "implicit"])
def test_proxy_header_reaches_dovecot_before_tls(portico_factory, pki, haproxy_dovecot, mode):
    d = haproxy_dovecot
    address = "127.0.0.1:%d" % (d.haproxy_imaps_port if mode == "implicit" else d.haproxy_port)
    backend = {"name": "pxy", "address": address, "weight": 1, "tls": mode,
               "proxy_protocol": True, "forward_id": False}
    if mode != "none":
        backend.update({"ca": str(pki.ca), "server_name": "mail.test"})
    p = portico_factory([], config={"backend": [backend]})
    user = {"none": "alice", "starttls": "bob", "implicit": "carol"}[mode]
    c = connect_from(CLIENT_IP, p.port)
    try:
        assert c.greeting.startswith(b"* OK"), c.greeting
        tagged, _ = c.command("LOGIN %s %s" % (quote(user), quote(PASSWORD)))
        assert tagged.startswith(b"a001 OK"), (tagged, p.log_tail(), d.log_text()[-2000:])
        assert c.command("SELECT INBOX")[0].startswith(b"a002 OK")
        client_port = c.local_port
        c.command("LOGOUT")
    finally:
        c.close()

    # Dovecot's own login line: the header's addresses, over the TLS mode asked for.
    pattern = re.compile(r"imap-login: Info: Login: user=<%s>," % user)
    assert wait_until(lambda: pattern.search(d.log_text()), 10), d.log_text()[-3000:]
    line = [l for l in d.log_text().splitlines() if pattern.search(l)][-1]
    fields = dict(re.findall(r"(\w+)=([^,\s]+)", line))
    assert fields.get("rip") == CLIENT_IP and fields.get("rport") == str(client_port), line
    assert fields.get("lip") == "127.0.0.1" and fields.get("lport") == str(p.port), line
    assert fields.get("real_rip") == "127.0.0.1", line
    assert fields.get("real_rport") != str(client_port), line
    assert (", TLS," in line) == (mode != "none"), line
