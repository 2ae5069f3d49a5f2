"""Faults and their defined client-visible results, with no byte altered.

Each test is self-contained: it starts what it needs (a real Dovecot where
Dovecot can produce the fault, a scripted fake backend where it cannot:
dying part-way through a response on demand) and a Portico in front.
"""

import re

import pytest

from harness import ImapConn
from scripted_backend import ScriptedBackend

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
