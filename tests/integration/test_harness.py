"""Checks the harness itself against Dovecot directly (no Portico involved).

These must pass whatever state the proxy is in: they prove that a failure in
test_proxy_core.py is Portico's and not the harness's.
"""

import imaplib
import re
import socket
import time
import tomllib
import uuid

import pytest

from harness import (
    PASSWORD,
    USERS,
    ImapConn,
    Portico,
    make_message,
    plain_b64,
    sha256,
    to_toml,
    which_backend,
)


def _imap(d, user="alice"):
    m = imaplib.IMAP4("127.0.0.1", d.port, timeout=10)
    m.login(user, PASSWORD)
    return m


def test_two_instances_answer_on_their_own_ports(backends):
    mbx1, mbx2 = backends
    assert mbx1.port != mbx2.port
    assert mbx1.root != mbx2.root
    for d in backends:
        c = ImapConn(d.port)
        assert c.greeting.startswith(b"* OK"), c.greeting
        c.close()


def test_login_append_lands_in_that_instances_maildir(backends):
    mbx1, mbx2 = backends
    marker = "h-" + uuid.uuid4().hex
    m = _imap(mbx1, "alice")
    typ, data = m.append("INBOX", None, None, make_message("harness", marker=marker))
    assert typ == "OK", data
    m.logout()
    assert len(mbx1.messages_with("alice", marker)) == 1
    assert mbx2.messages_with("alice", marker) == []
    assert which_backend(backends, "alice", marker) == ["mbx1"]
    assert mbx1.messages("alice"), "messages() lists new/ and cur/"


def test_all_users_log_in_and_wrong_password_fails(backends):
    d = backends[1]
    for user in ("bob", "carol", USERS[-1]):
        _imap(d, user).logout()
    m = imaplib.IMAP4("127.0.0.1", d.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "wrong-password")
    m.login("alice", PASSWORD)  # same connection, right password
    m.logout()


def test_dovecot_advertises_compress_after_login(backends):
    # The proxy test that Portico strips COMPRESS=DEFLATE means something
    # only if the backend offers it.
    m = _imap(backends[0])
    typ, caps = m.capability()
    assert b"COMPRESS=DEFLATE" in caps[0].split(), caps
    m.logout()


def test_authenticate_plain_with_and_without_sasl_ir(backends):
    d = backends[0]
    with ImapConn(d.port) as c:
        tagged, _ = c.command("AUTHENTICATE PLAIN " + plain_b64("bob"))
        assert tagged.split()[1] == b"OK", tagged
    with ImapConn(d.port) as c:
        c.send("a1 AUTHENTICATE PLAIN\r\n")
        assert c.readline().startswith(b"+")
        c.send(plain_b64("bob") + "\r\n")
        tagged, _ = c.read_response("a1")
        assert tagged.startswith(b"a1 OK"), tagged


def test_raw_idle_sees_append_from_another_connection(backends):
    d = backends[0]
    with ImapConn(d.port, timeout=5) as c:
        assert c.login("grace").split()[1] == b"OK"
        untagged = c.ok("SELECT INBOX")
        exists = [int(m.group(1)) for l in untagged for m in [re.match(rb"\* (\d+) EXISTS", l)] if m][0]
        c.send("i1 IDLE\r\n")
        assert c.readline().startswith(b"+")
        m = _imap(d, "grace")
        m.append("INBOX", None, None, make_message("idle"))
        m.logout()
        while True:
            line = c.readline()
            mm = re.match(rb"\* (\d+) EXISTS", line)
            if mm and int(mm.group(1)) > exists:
                break
        c.send("DONE\r\n")
        tagged, _ = c.read_response("i1")
        assert tagged.startswith(b"i1 OK")


def test_ten_mib_roundtrip_direct(backends):
    d = backends[1]
    msg = make_message("big", body_bytes=10 * 1024 * 1024 * 3 // 4)
    assert len(msg) >= 10 * 1024 * 1024
    m = _imap(d, "heidi")
    typ, data = m.append("INBOX", None, None, msg)
    assert typ == "OK"
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.select("INBOX")
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
    assert sha256(data[0][1]) == sha256(msg)
    m.logout()


def test_kill_takes_the_whole_group_and_start_again(own_backends):
    d = own_backends[0]
    c = ImapConn(d.port, timeout=3)
    assert c.login("alice").split()[1] == b"OK"
    c.ok("SELECT INBOX")
    assert len(d.group_pids()) > 1
    t0 = time.monotonic()
    d.kill()
    data, how = c.read_until_closed(3)
    assert how in ("eof", "reset"), (data, how)
    assert time.monotonic() - t0 < 1.5
    assert d.group_pids() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
    port = d.port
    d.start()
    assert d.port == port
    _imap(d).logout()
    marker = "restart-" + uuid.uuid4().hex
    m = _imap(d, "bob")
    m.append("INBOX", None, None, make_message("after restart", marker=marker))
    m.logout()
    assert d.messages_with("bob", marker)


def test_stop_is_graceful_and_restartable(own_backends):
    d = own_backends[1]
    d.stop()
    assert not d.running() and d.group_pids() == []
    d.start()
    _imap(d).logout()


def test_toml_writer_roundtrips_the_default_config(backends, tmp_path):
    p = Portico(backends, workdir=tmp_path, config={"timeouts": {"shutdown": "3s"}})
    cfg = tomllib.loads(p.render_config())
    assert cfg["workers"] == 2
    assert [b["name"] for b in cfg["backend"]] == ["mbx1", "mbx2"]
    assert cfg["backend"][0]["address"] == backends[0].address
    assert cfg["backend"][0]["forward_id"] is False
    assert cfg["listen"][0]["address"] == "127.0.0.1:%d" % p.port
    assert cfg["timeouts"] == {"prelogin": "60s", "idle": "30m", "backend_connect": "5s",
                               "backend_login": "30s", "shutdown": "3s"}
    assert cfg["limits"]["login_failure_delay"] == "100ms"
    assert cfg["routing"] == {"map_file": "", "connect_retries": 2}
    nested = tomllib.loads(to_toml({"health": {"probe": {"ImapDeepTestProbe": {"interval": "180s"}}},
                                    "a key": [1, 2]}))
    assert nested["health"]["probe"]["ImapDeepTestProbe"]["interval"] == "180s"
    assert nested["a key"] == [1, 2]


def test_template_config(backends, tmp_path):
    tpl = '[[listen]]\naddress = "127.0.0.1:$listen_port"\n[[backend]]\nname = "mbx1"\naddress = "$mbx1_address"\n'
    p = Portico(backends, workdir=tmp_path, config=tpl)
    cfg = tomllib.loads(p.render_config())
    assert cfg["listen"][0]["address"] == "127.0.0.1:%d" % p.port
    assert cfg["backend"][0]["address"] == backends[0].address
