"""COMPRESS=DEFLATE (RFC 4978) terminated in Portico, with a real client.

The client is Python's socket (plain or ssl) with zlib's raw DEFLATE
(wbits=-15) on both directions after the tagged OK, as a mail client does;
imaplib has no COMPRESS. The backends are real Dovecots, reached in plain
IMAP: they never see the COMPRESS command, and Portico still frames and
counts every command (admin `stats`).
"""

import random
import re
import socket
import ssl

import pytest

from harness import DeflateConn, free_port, wait_until


def caps_in(line):
    m = re.search(rb"CAPABILITY ([^\]\r\n]*)", line, re.I)
    return m.group(1).upper().split() if m else []


def eight_bit_message(marker, size=150_000, seed=14):
    """A message with 8-bit bytes (0x80-0xff), long CRLF-ended lines and
    some repetitive text: both compressible and incompressible parts."""
    rnd = random.Random(seed)
    head = ("From: Alice <alice@example.com>\r\nTo: bob@example.com\r\n"
            "Subject: compress %s\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" % marker).encode()
    body = bytearray()
    alphabet = bytes(range(0x20, 0x7f)) + bytes(range(0x80, 0x100))
    while len(body) < size:
        if rnd.random() < 0.5:
            body += b"Quarterly report line, nothing new here: " + marker.encode() + b"\r\n"
        else:
            body += bytes(rnd.choice(alphabet) for _ in range(76)) + b"\r\n"
    return head + bytes(body)


def command_count(portico, name):
    stats = portico.admin("stats")
    return sum(b.get("commands", {}).get(name, {}).get("count", 0)
               for b in stats["backends"].values())


@pytest.fixture
def setup(portico_factory, backends, pki):
    """Portico with a plain listener and an implicit-TLS one."""
    tls_port = free_port()
    p = portico_factory(backends, start=False)
    p.config = {"listen": [
        {"address": "127.0.0.1:%d" % p.port},
        {"address": "127.0.0.1:%d" % tls_port, "tls": "implicit", "cert": str(pki.mail.cert),
         "key": str(pki.mail.key)},
    ]}
    p.start()
    p.tls_port = tls_port
    return p


def connect(setup, pki, use_tls):
    if not use_tls:
        return DeflateConn(socket.create_connection(("127.0.0.1", setup.port), timeout=15))
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    raw = socket.create_connection(("127.0.0.1", setup.tls_port), timeout=15)
    return DeflateConn(ctx.wrap_socket(raw, server_hostname="mail.test"))


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "implicit_tls"])
def test_compressed_session_appends_and_fetches_byte_identical(setup, pki, use_tls):
    c = connect(setup, pki, use_tls)
    assert b"COMPRESS" not in c.greeting, "COMPRESS is for authenticated sessions only"
    tagged, _ = c.command("COMPRESS DEFLATE", tag="p1")
    assert tagged.startswith((b"p1 BAD", b"p1 NO")), tagged

    tagged = c.login("alice")
    assert tagged.startswith(b"a001 OK"), tagged
    assert b"COMPRESS=DEFLATE" in caps_in(tagged), tagged
    untagged = c.ok("CAPABILITY")
    assert any(b"COMPRESS=DEFLATE" in caps_in(l) for l in untagged), untagged

    appends_before = command_count(setup, "APPEND")
    fetches_before = command_count(setup, "UID FETCH") + command_count(setup, "FETCH")
    compress_before = command_count(setup, "COMPRESS")

    assert c.start_compression("z1").startswith(b"z1 OK"), "COMPRESS DEFLATE refused"
    marker = "cmp-%s-%d" % ("tls" if use_tls else "plain", free_port())
    msg = eight_bit_message(marker)
    # A synchronizing literal: the "+" continuation comes back compressed.
    c.send("a1 APPEND INBOX {%d}\r\n" % len(msg))
    cont = c.readline()
    assert cont.startswith(b"+"), cont
    wire_before = c.wire_out
    c.send(msg + b"\r\n")
    tagged, _ = c.read_response("a1")
    assert tagged.startswith(b"a1 OK"), tagged
    assert c.wire_out - wire_before < len(msg), "the upload was not compressed"
    uid = re.search(rb"APPENDUID \d+ (\d+)", tagged)
    assert uid, tagged

    c.ok("SELECT INBOX")
    wire_in_before = c.wire_in
    tagged, untagged = c.command("UID FETCH %s BODY.PEEK[]" % uid.group(1).decode(), tag="f1")
    assert tagged.startswith(b"f1 OK"), tagged
    fetched = b"".join(untagged)
    start = fetched.index(b"}\r\n") + 3
    assert fetched[start:start + len(msg)] == msg, "the message came back altered"
    assert c.wire_in - wire_in_before < len(msg), "the download was not compressed"

    tagged, _ = c.command("COMPRESS DEFLATE", tag="z2")
    assert tagged.startswith(b"z2 NO [COMPRESSIONACTIVE]"), tagged

    # Portico framed and counted every command in plaintext.
    assert wait_until(lambda: command_count(setup, "APPEND") == appends_before + 1, timeout=5)
    assert command_count(setup, "UID FETCH") + command_count(setup, "FETCH") > fetches_before
    assert wait_until(lambda: command_count(setup, "COMPRESS") == compress_before + 2, timeout=5), \
        command_count(setup, "COMPRESS")

    tagged, untagged = c.command("LOGOUT", tag="l1")
    assert tagged.startswith(b"l1 OK") and any(l.startswith(b"* BYE") for l in untagged), tagged
    c.sock.close()


def test_pipelined_plaintext_after_compress_is_refused(setup, pki):
    c = connect(setup, pki, False)
    assert c.login("bob").startswith(b"a001 OK")
    c.send("z1 COMPRESS DEFLATE\r\nn1 NOOP\r\n")
    first = c.readline()
    assert first.startswith(b"z1 BAD"), first
    tagged, _ = c.read_response("n1")
    assert tagged.startswith(b"n1 OK"), tagged
    # Still plain, and COMPRESS works once sent alone.
    assert c.start_compression("z2").startswith(b"z2 OK")
    c.ok("NOOP")
    c.sock.close()


def test_corrupt_stream_ends_the_session_with_a_log_line(setup, pki):
    c = connect(setup, pki, False)
    assert c.login("carol").startswith(b"a001 OK")
    assert c.start_compression().startswith(b"z1 OK")
    c.ok("NOOP")
    port = c.sock.getsockname()[1]
    c.sock.sendall(b"\xff\xfe\xfd this is not a DEFLATE block\r\n" * 4)
    ends = setup.wait_for_session_ends([port], timeout=10)
    assert port in ends, ends
    assert setup.count_lines("COMPRESS: corrupt DEFLATE stream") >= 1, setup.log_tail(20)
    assert setup.running()
    c.sock.close()


def test_listener_with_compress_off_neither_offers_nor_accepts_it(portico_factory, backends):
    p = portico_factory(backends, start=False)
    p.config = {"listen": [{"address": "127.0.0.1:%d" % p.port, "compress": False}]}
    p.start()
    c = DeflateConn(socket.create_connection(("127.0.0.1", p.port), timeout=15))
    tagged = c.login("dave")
    assert tagged.startswith(b"a001 OK"), tagged
    assert b"COMPRESS=DEFLATE" not in caps_in(tagged), tagged
    untagged = c.ok("CAPABILITY")
    assert not any(b"COMPRESS" in l for l in untagged), untagged
    tagged, _ = c.command("COMPRESS DEFLATE", tag="z1")
    assert tagged.startswith(b"z1 NO [CANNOT]"), tagged
    c.ok("NOOP")  # still plain, still served
    c.sock.close()
