#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/seeds/<target>/ (run from anywhere;
the files are committed, so run it again only after changing it).

Each seed is a small, meaningful input in the target's own layout (see the
comment at the top of each tests/fuzz/*_fuzz.cc): real IMAP command lines,
a LOGIN with literals, AUTHENTICATE with and without SASL-IR, ID, IDLE,
STARTTLS, server responses with FETCH literals, HTTP requests to the status
endpoint, admin socket lines and inbound PROXY protocol headers. .ci/run
starts every fuzz target from its seeds (and from the corpus it grew
before, in build-fuzz/corpus-<target>).
"""

import base64
import shutil
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "seeds"


def plain(user, password, authzid=""):
    return base64.b64encode(("%s\0%s\0%s" % (authzid, user, password)).encode())


# --------------------------------------------------------------------------
# Client command streams (command_framer_fuzz, prelogin_fuzz, session_fuzz)

COMMANDS = {
    "capability": b"a1 CAPABILITY\r\n",
    "noop_logout": b"a1 NOOP\r\na2 LOGOUT\r\n",
    "login_quoted": b'a1 LOGIN "alice" "secret-PW-123"\r\n',
    "login_atoms": b"a1 LOGIN alice secret\r\n",
    "login_literal": b"a1 LOGIN {5}\r\nalice {13}\r\nsecret-PW-123\r\n",
    "login_literal_plus": b"a1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
    "login_utf8": 'a1 LOGIN "jörg" "pässword"\r\n'.encode(),
    "authenticate_ir": b"a1 AUTHENTICATE PLAIN " + plain("alice", "secret") + b"\r\n",
    "authenticate_cont": b"a1 AUTHENTICATE PLAIN\r\n" + plain("alice", "secret") + b"\r\n",
    "authenticate_cancel": b"a1 AUTHENTICATE PLAIN\r\n*\r\na2 NOOP\r\n",
    "authenticate_xoauth2": b"a1 AUTHENTICATE XOAUTH2 "
    + base64.b64encode(b"user=alice\x01auth=Bearer tok\x01\x01") + b"\r\n",
    "id": b'a1 ID ("name" "Thunderbird" "version" "115.0")\r\n',
    "id_nil": b"a1 ID NIL\r\n",
    "starttls": b"a1 STARTTLS\r\na2 CAPABILITY\r\n",
    "idle": b"a1 IDLE\r\nDONE\r\na2 NOOP\r\n",
    "select_fetch": b"a2 SELECT INBOX\r\na3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n",
    "append": b"a4 APPEND INBOX (\\Seen) {23}\r\nSubject: hi\r\n\r\nHello!\r\n\r\n",
    "append_nonsync": b"a4 APPEND INBOX {5+}\r\nhello\r\n",
    "search_nested": b'a5 SEARCH OR (FROM "a") (NOT (TO "b")) SINCE 1-Jan-2024\r\n',
    "bad": b"a1 FOO bar\r\n* NOOP\r\nnotag\r\n",
}

# --------------------------------------------------------------------------
# Server response streams (response_framer_fuzz)

RESPONSES = {
    "greeting": b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n",
    "login_ok": b"* CAPABILITY IMAP4rev1 IDLE\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
    "select": b"* FLAGS (\\Answered \\Seen)\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
    b"a2 OK [READ-WRITE] Select completed.\r\n",
    "fetch_literal": b"* 1 FETCH (UID 7 BODY[] {14}\r\nSubject: x\r\n\r\n)\r\na3 OK Fetch completed.\r\n",
    "continuation": b"+ OK\r\n+ \r\na4 OK [APPENDUID 1 8] Append completed.\r\n",
    "idle": b"+ idling\r\n* 4 EXISTS\r\na5 OK Idle completed.\r\n",
    "bye": b"* BYE [UNAVAILABLE] Server shutting down.\r\n",
    "no_bad": b"a6 NO [TRYCREATE] Mailbox doesn't exist\r\na7 BAD Error in IMAP command\r\n",
}

# --------------------------------------------------------------------------
# The status endpoint (http_request_fuzz)

HTTP = {
    "healthz": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "keepalive_two": b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n"
    b"Connection: close\r\n\r\n",
    "query_token": b"GET /health?set=IMAP* HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n",
    "post_body": b"POST /probe HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "expect": b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
}

# --------------------------------------------------------------------------
# Inbound PROXY protocol headers (proxy_header_fuzz): byte 0 the size bound
# (0: default), bytes 1-2 a split seed, then the stream as a load balancer
# sends it (header, then the client's first bytes).


def proxy_v2(command, family, body):
    return (b"\r\n\r\n\0\r\nQUIT\n" + bytes([command, family]) + len(body).to_bytes(2, "big")
            + body)


INET = bytes([192, 0, 2, 1, 198, 51, 100, 2, 0xDC, 0x04, 0x00, 143])
INET6 = bytes([0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1] + [0] * 15 + [1] + [0x04, 0xD2, 0x03, 0xE1])

PROXY_HEADERS = {
    "v1_tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 143\r\na1 NOOP\r\n",
    "v1_tcp6": b"PROXY TCP6 2001:db8::1 ::1 1234 993\r\n\x16\x03\x01\x00\xa5",
    "v1_unknown": b"PROXY UNKNOWN\r\n",
    "v1_bad_port": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v2_inet": proxy_v2(0x21, 0x11, INET) + b"a1 CAPABILITY\r\n",
    "v2_inet6_tls": proxy_v2(0x21, 0x21, INET6) + b"\x16\x03\x01\x00\xa5\x01",
    "v2_tlvs": proxy_v2(0x21, 0x11, INET + b"\x01\x00\x04imap\x04\x00\x00\x05\x00\x03abc"),
    "v2_local": proxy_v2(0x20, 0x00, b""),
    "v2_unix": proxy_v2(0x21, 0x31, b"/" * 216),
    "v2_bad_tlv": proxy_v2(0x21, 0x11, INET + b"\x01\x00\x09ab"),
}

# --------------------------------------------------------------------------
# Admin socket lines (admin_fuzz): one request per line.

ADMIN = {
    "help_stats": b"help\nstats\n",
    "sessions": b"sessions\nsessions --user alice --ip 127.0.0.1 --backend mbx1\n",
    "kick": b"kick 00000000deadbeef\nkick --user alice\nkick\n",
    "backend": b"backend list\nbackend drain mbx1 --move-sessions\nbackend enable mbx1\n"
    b"backend drain nosuch\n",
    "protocol_log": b"protocol-log status\nprotocol-log on --user alice --ip 127.0.0.0/8 --ttl 15m\n"
    b"protocol-log off\n",
    "health": b"health\nhealth IMAP*\n",
    "probe": b"probe IMAP.Protocol\\ImapSelfTestProbe mbx1\nprobe IMAP.Proxy/ImapProxyTestProbe\n",
    "monitor": b"monitor disable ImapDeepTestMonitor mbx1\nmonitor repairing ImapDeepTestMonitor mbx1\n"
    b"monitor enable ImapDeepTestMonitor mbx1\n",
    "quoting": b'sessions --user "a b\\"c"\nkick "unterminated\n',
    "reload": b"reload\n",
    # Invalid UTF-8 ("\xff\xfe" as a line) aborts today's main (issue 9,
    # defect 1): its reproducer waits in regressions/pending/admin_fuzz/
    # until that fix is in; then it belongs here.
}

# --------------------------------------------------------------------------
# Whole sessions (session_fuzz): NUL-separated events, first the setup.
# C client bytes, c/f backend connect ok/fail, G greeting, O/n answer
# OK/NO, + continuation, B raw backend bytes, x/X backend/client close,
# T<n> n x 100 ms, q/d Q/D backpressure, K kick, Y shutdown, A abort.

LOGIN_OK = [b"c", b"G", b"O"]


def session(setup, *events):
    return b"\0".join([b"S" + setup] + list(events))


SESSIONS = {
    "capability_logout": session(b"", b"Ca1 CAPABILITY\r\n", b"Ca2 LOGOUT\r\n", b"X"),
    "login_relay": session(b"", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK,
                           b"Ca2 SELECT INBOX\r\n", b"O", b"Ca3 LOGOUT\r\n", b"B* BYE bye\r\na3 OK\r\n",
                           b"x"),
    "login_split": session(b"", b"Ca1 LO", b"GIN ali", b"ce sec", b"ret\r", b"\n", *LOGIN_OK),
    "login_literal": session(b"s", b"Ca1 LOGIN {5}\r\n", b"Calice {6}\r\n", b"Csecret\r\n",
                             *LOGIN_OK),
    "login_failed_then_ok": session(b"", b"Ca1 LOGIN alice wrong\r\n", b"c", b"G", b"n", b"T5",
                                    b"Ca2 LOGIN alice secret\r\n", *LOGIN_OK),
    "failover": session(b"", b"Ca1 LOGIN bob secret\r\n", b"f", b"R", b"c", b"G", b"O"),
    "never_greets": session(b"w", b"Ca1 LOGIN bob secret\r\n", b"c", b"T100", b"R"),
    "authenticate_ir": session(b"", b"Ca1 AUTHENTICATE PLAIN " + plain("alice", "secret") + b"\r\n",
                               *LOGIN_OK),
    "authenticate_cont": session(b"", b"Ca1 AUTHENTICATE PLAIN\r\n",
                                 b"C" + plain("alice", "secret") + b"\r\n", b"c", b"G", b"O"),
    "authenticate_bad_base64": session(b"", b"Ca1 AUTHENTICATE PLAIN dXNlcg==x\r\n", b"X"),
    "idle_prelogin": session(b"", b"Ci1 IDLE\r\n", b"Ci2 NOOP\r\n"),
    "idle_relay": session(b"", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK, b"Ci1 IDLE\r\n",
                          b"B+ idling\r\n", b"B* 3 EXISTS\r\n", b"CDONE\r\n", b"O"),
    "id": session(b"", b'Ca1 ID ("name" "Thunderbird" "version" "115")\r\n', b"Ca2 NOOP\r\n"),
    "starttls": session(b"tr", b"Ca1 CAPABILITY\r\n", b"Ca2 LOGIN alice x\r\n",
                        b"Ca3 STARTTLS\r\n", b"Ca4 CAPABILITY\r\n", b"Ca5 LOGIN alice secret\r\n",
                        *LOGIN_OK),
    # The PROXY header precedes STARTTLS on the same line, so the tags are
    # answered with raw bytes here.
    "backend_starttls_proxy_id": session(b"Tpi", b"Ca1 LOGIN alice secret\r\n", b"c", b"G",
                                         b"BP0TLS OK Begin TLS\r\n", b"c",
                                         b"B* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP0CAP OK\r\n",
                                         b"BP0ID OK\r\n", b"O", b"Ca2 NOOP\r\n", b"O"),
    "append_literal": session(b"", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK,
                              b"Ca2 APPEND INBOX {11}\r\n", b"B+ OK\r\n", b"Chello", b" world\r\n",
                              b"O"),
    "backend_dies_mid_literal": session(b"", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK,
                                        b"Ca2 FETCH 1 BODY[]\r\n", b"B* 1 FETCH (BODY[] {100}\r\nabc",
                                        b"x"),
    "slowloris": session(b"s", b"Ca", b"T30", b"C1", b"T30", b"C ", b"T30", b"CN", b"T100"),
    "bad_commands": session(b"s", b"Ca1 SELECT INBOX\r\n", b"Ca2 FOO\r\n", b"Ca3 BAR\r\n"),
    "backpressure": session(b"s", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK, b"q",
                            b"Ca2 FETCH 1:* BODY[]\r\n", b"B* 1 FETCH (BODY[] {4}\r\nabcd)\r\n", b"d",
                            b"O"),
    "shutdown_mid_login": session(b"", b"Ca1 LOGIN alice secret\r\n", b"c", b"Y", b"G", b"O"),
    "kick_relay": session(b"l", b"Ca1 LOGIN alice secret\r\n", *LOGIN_OK, b"Ca2 NOOP\r\n", b"K"),
    "utf8_user": session(b"l", 'Ca1 LOGIN "jörg" "pässword"\r\n'.encode(), *LOGIN_OK),
    "invalid_utf8_literal_user": session(b"", b"Ca1 LOGIN {2+}\r\n\xff\xfe wrong\r\n", b"c", b"G",
                                         b"n", b"T5", b"I"),
    "probe_user": session(b"", b"Ca1 LOGIN healthmailbox-mbx1 secret\r\n", b"f", b"R"),
}


def framer_header(flags=0, a=0, b=0, c=0, split=(7, 3, 17, 5)):
    return bytes([flags, a, b, c, *split])


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    for name, stream in COMMANDS.items():
        flags = 0
        if b"AUTHENTICATE" in stream:
            flags |= 64  # end AUTHENTICATE after its first line, as the session does
        if b"IDLE" in stream:
            flags |= 128
        write("command_framer_fuzz", name, framer_header(flags) + stream)
        write("prelogin_fuzz", name, stream.split(b"\r\n")[0] + b"\r\n" if b"{" not in stream else stream)
    write("command_framer_fuzz", "small_limits", framer_header(1 | 2 | 4, 20, 4, 8) + COMMANDS["login_literal"])
    for name, stream in RESPONSES.items():
        write("response_framer_fuzz", name, framer_header() + stream)
    write("response_framer_fuzz", "small_limits", framer_header(1 | 4, 30, 0, 6) + RESPONSES["fetch_literal"])
    for i, (name, req) in enumerate(HTTP.items()):
        write("http_request_fuzz", name, bytes([(37 * i + 11) % 256]) + req)
    for i, (name, stream) in enumerate(PROXY_HEADERS.items()):
        write("proxy_header_fuzz", name, bytes([0 if i % 3 else 8, 7 * i + 1, 3]) + stream)
    for name, lines in ADMIN.items():
        write("admin_fuzz", name, lines)
    for name, script in SESSIONS.items():
        write("session_fuzz", name, script)


if __name__ == "__main__":
    main()
