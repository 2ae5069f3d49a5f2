"""Pre-login hardening against real Dovecot backends (issue 9, defects 4, 9, 10).

- A refused AUTHENTICATE or IDLE before login leaves the session usable: the
  next command is answered at once, with its own tag. After login, a literal
  Dovecot refuses instead of inviting leaves the next command framed as one.
- ID within RFC 2971's limits (30 pairs, 30-octet names, 1024-octet values)
  is accepted whatever its encoding; beyond them it gets a tagged BAD and the
  session goes on.
- UTF-8 in quoted strings (RFC 9051, UTF8=ACCEPT): a Dovecot user with a
  UTF-8 name and password logs in through Portico.

Every read has a timeout far below the 60 s pre-login timeout, so a wedged
session fails a test instead of passing late.
"""

import imaplib
import re
import uuid

import pytest

from harness import (
    PASSWORD,
    UTF8_PASSWORD,
    UTF8_USER,
    ImapConn,
    make_message,
    quote,
    which_backend,
)

PROMPT = 5.0  # seconds; the pre-login timeout is 60


def assert_usable(c: ImapConn, user: str = "alice") -> None:
    """NOOP, CAPABILITY and a LOGIN on `c` are answered, each with its own tag."""
    tagged, _ = c.command("NOOP", tag="u1")
    assert tagged.startswith(b"u1 OK"), tagged
    tagged, untagged = c.command("CAPABILITY", tag="u2")
    assert tagged.startswith(b"u2 OK"), tagged
    assert any(l.startswith(b"* CAPABILITY ") for l in untagged), untagged
    tagged, _ = c.command("LOGIN %s %s" % (quote(user), quote(PASSWORD)), tag="u3")
    assert tagged.startswith(b"u3 OK"), tagged
    tagged, _ = c.command("NOOP", tag="u4")  # relayed to Dovecot now
    assert tagged.startswith(b"u4 OK"), tagged


# --------------------------------------------------------------------------
# Defect 4: refused AUTHENTICATE / IDLE


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(b"a1 AUTHENTICATE PLAIN dXNlcg\r\n", id="unpadded-base64"),
        pytest.param(b"a1 AUTHENTICATE PLAIN dXNlcg== extra\r\n", id="extra-argument"),
        pytest.param(b"a1 AUTHENTICATE PLAIN {8}\r\n", id="sync-literal-response"),
        pytest.param(b"a1 AUTHENTICATE PLAIN {8+}\r\nAHVzZXIA\r\n", id="nonsync-literal-response"),
        pytest.param(b"a1 AUTHENTICATE CRAM-MD5\r\n", id="unsupported-mechanism"),
        pytest.param(b"a1 AUTHENTICATE\r\n", id="no-mechanism"),
    ],
)
def test_refused_authenticate_leaves_the_session_usable(portico, refused):
    c = ImapConn(portico.port, timeout=PROMPT)
    # The next command is pipelined in the same write, as a client that
    # expects no continuation sends it.
    c.send(refused + b"n1 NOOP\r\n")
    tagged, untagged = c.read_response("a1")
    assert re.match(rb"a1 (BAD|NO) ", tagged), tagged
    assert not any(l.startswith(b"+") for l in untagged), "a refused AUTHENTICATE was continued"
    tagged, _ = c.read_response("n1")
    assert tagged.startswith(b"n1 OK"), tagged
    assert_usable(c)
    c.close()


def test_prelogin_idle_then_the_next_command_gets_its_own_tag(portico):
    c = ImapConn(portico.port, timeout=PROMPT)
    c.send("i1 IDLE\r\n")
    line = c.readline()
    assert line.startswith(b"i1 BAD "), line
    c.send("n1 NOOP\r\n")
    line = c.readline()
    assert line.startswith(b"n1 OK "), "NOOP after a refused IDLE got %r" % line
    # Pipelined in one write.
    c.send("i2 IDLE\r\nn2 CAPABILITY\r\n")
    tagged, _ = c.read_response("i2")
    assert tagged.startswith(b"i2 BAD "), tagged
    tagged, untagged = c.read_response("n2")
    assert tagged.startswith(b"n2 OK "), tagged
    assert_usable(c)
    c.close()


def test_literal_of_a_command_that_cannot_take_one_is_refused_before_its_body(portico):
    c = ImapConn(portico.port, timeout=PROMPT)
    c.send("x1 SELECT {5}\r\n")
    line = c.readline()
    assert line.startswith(b"x1 BAD "), "expected a refusal instead of %r" % line
    assert_usable(c)
    c.close()


def test_literal_refused_by_dovecot_leaves_the_next_command_accounted(portico):
    # After login the same class of bug: Dovecot answers an APPEND to a
    # missing mailbox with NO [TRYCREATE] instead of "+", and the client
    # sends its next command instead of the body. Portico must frame that
    # command as one, or it counts a command in flight that never ends.
    c = ImapConn(portico.port, timeout=10)
    assert c.login("alice").startswith(b"a001 OK")
    c.send("a2 APPEND no-such-mailbox {5}\r\n")
    line = c.readline()
    assert line.startswith(b"a2 NO [TRYCREATE]"), line
    c.send("a3 IDLE\r\n")
    assert c.readline().startswith(b"+ "), "no IDLE continuation"
    c.send("DONE\r\n")
    tagged, _ = c.read_response("a3")
    assert tagged.startswith(b"a3 OK"), tagged
    mine = [s for s in portico.admin("sessions")["sessions"]
            if s["client"] == "127.0.0.1:%d" % c.local_port]
    assert len(mine) == 1, mine
    assert mine[0]["commands_in_flight"] == 0, mine[0]
    assert mine[0]["command"] == "", mine[0]
    c.close()


# --------------------------------------------------------------------------
# Defect 9: ID at and beyond RFC 2971's limits


def id_line(tag: str, pairs: int, field_bytes: int = 30, value_bytes: int = 1024) -> bytes:
    items = []
    for i in range(pairs):
        field = ("f%02d" % i).ljust(field_bytes, "x")
        value = chr(ord("a") + i % 26) * value_bytes
        items.append('"%s" "%s"' % (field, value))
    return ("%s ID (%s)\r\n" % (tag, " ".join(items))).encode()


def test_id_at_rfc2971_limits_is_accepted(portico):
    c = ImapConn(portico.port, timeout=PROMPT)
    line = id_line("d1", 30)
    assert 31_000 < len(line) < 32_768, len(line)
    c.send(line)
    tagged, untagged = c.read_response("d1")
    assert tagged.startswith(b"d1 OK"), tagged
    assert any(l.startswith(b"* ID (") for l in untagged), untagged

    # The longest ID the limits allow: a 64-byte tag and every octet of every
    # name and value escaped in its quoted string (about 62 KiB on one line).
    tag = "t" * 64
    pair = '"%s" "%s"' % ('\\"' * 30, "\\\\" * 1024)
    c.send(("%s ID (%s)\r\n" % (tag, " ".join([pair] * 30))).encode())
    tagged, _ = c.read_response(tag)
    assert tagged.startswith(tag.encode() + b" OK"), tagged[:120]

    # The same limits as synchronizing literals, each invited with "+".
    c.send(b'd3 ID ("name" {1024}\r\n')
    assert c.readline().startswith(b"+")
    c.send(b"v" * 1024 + b' "version" NIL)\r\n')
    tagged, _ = c.read_response("d3")
    assert tagged.startswith(b"d3 OK"), tagged
    assert_usable(c)
    c.close()


def test_id_beyond_rfc2971_limits_gets_bad_and_the_session_goes_on(portico):
    c = ImapConn(portico.port, timeout=PROMPT)
    for tag, line, message in [
        ("e1", id_line("e1", 31), b"Too many ID fields"),
        ("e2", id_line("e2", 30, value_bytes=1025), b"ID field value too long"),
        ("e3", id_line("e3", 1, field_bytes=31), b"ID field name too long"),
    ]:
        c.send(line)
        tagged, _ = c.read_response(tag)
        assert tagged.startswith(tag.encode() + b" BAD " + message), tagged
    # A value literal over 1024 octets is refused before its body is sent.
    c.send(b'e4 ID ("name" {1025}\r\n')
    line = c.readline()
    assert line.startswith(b"e4 BAD "), line
    assert_usable(c)
    c.close()


def test_id_longer_than_any_rfc2971_id_is_refused_and_the_session_ends(portico):
    # Over the largest line an RFC 2971 ID can take (about 62 KiB) the line
    # is not read on: like any over-long pre-login line, BAD then BYE.
    c = ImapConn(portico.port, timeout=PROMPT)
    try:
        c.send(id_line("f1", 70))
    except (BrokenPipeError, ConnectionResetError):
        pass  # Portico may close before the whole line is written
    data, how = c.read_until_closed(PROMPT)
    assert re.search(rb"(^|\r\n)f1 BAD ", data), (data[:300], how)
    assert b"* BYE " in data, data[:300]
    assert how in ("eof", "reset"), how
    c.close()


# --------------------------------------------------------------------------
# Defect 10: UTF-8 in quoted strings


def test_utf8_login_with_imaplib_reaches_the_users_mailbox(backends, portico):
    marker = "utf8-%s" % uuid.uuid4().hex[:16]
    m = imaplib.IMAP4("127.0.0.1", portico.port, timeout=30)
    m._encoding = "utf-8"  # send the quoted UTF-8 as a UTF8=ACCEPT client does
    # imaplib quotes only the password; the user name goes quoted by hand
    # (an atom is 7-bit).
    typ, data = m.login(quote(UTF8_USER), UTF8_PASSWORD)
    assert typ == "OK", data
    typ, data = m.append("INBOX", None, None, make_message("utf-8 login", marker=marker))
    assert typ == "OK", data
    m.logout()
    # The message is in that user's maildir on exactly one real Dovecot.
    assert len(which_backend(backends, UTF8_USER, marker)) == 1


def test_utf8_login_raw_bytes_and_refusals(backends, portico):
    user = UTF8_USER.encode()
    password = UTF8_PASSWORD.encode()
    c = ImapConn(portico.port, timeout=10)
    # A wrong UTF-8 password is Dovecot's NO, not Portico's BAD.
    c.send(b'l1 LOGIN "' + user + b'" "' + password + b'x"\r\n')
    tagged, _ = c.read_response("l1")
    assert tagged.startswith(b"l1 NO "), tagged
    # Malformed UTF-8 (a lone continuation byte, an overlong form) is BAD.
    for tag, bad in [(b"l2", b"j\x80rg"), (b"l3", b"j\xc0\xafrg")]:
        c.send(tag + b' LOGIN "' + bad + b'" "' + password + b'"\r\n')
        tagged, _ = c.read_response(tag.decode())
        assert tagged == tag + b" BAD Invalid UTF-8 in quoted string\r\n", tagged
    c.send(b'l4 LOGIN "' + user + b'" "' + password + b'"\r\n')
    tagged, _ = c.read_response("l4")
    assert tagged.startswith(b"l4 OK"), tagged
    tagged, _ = c.command("SELECT INBOX", tag="l5")
    assert tagged.startswith(b"l5 OK"), tagged
    c.close()
