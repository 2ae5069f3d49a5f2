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
    # The proxy test that Portico offers its own COMPRESS=DEFLATE in place
    # of the backend's (once) means something only if the backend offers it.
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


# --------------------------------------------------------------------------
# Sanitizer reports fail the test that provoked them (the CI runs this suite
# against the ASan+UBSan and ThreadSanitizer builds too).

_FAKE_PORTICO = r'''#!/usr/bin/python3
# Stands in for a sanitizer build of Portico: says ready, shows the
# sanitizer options it was given, and on SIGTERM prints what LeakSanitizer
# prints at exit (when REPORT is set) before exiting.
import os, signal, sys, time
report = %r
def term(*_):
    sys.stderr.write(report)
    sys.stderr.flush()
    os._exit(23 if report else 0)
# The handler first: the harness may send SIGTERM as soon as it reads "ready".
signal.signal(signal.SIGTERM, term)
sys.stderr.write("INFO [main] ASAN_OPTIONS=%%s\n" %% os.environ.get("ASAN_OPTIONS", ""))
sys.stderr.write("INFO [main] UBSAN_OPTIONS=%%s\n" %% os.environ.get("UBSAN_OPTIONS", ""))
sys.stderr.write("INFO [main] TSAN_OPTIONS=%%s\n" %% os.environ.get("TSAN_OPTIONS", ""))
sys.stderr.write("INFO [main] ready: fake\n")
sys.stderr.flush()
while True:
    time.sleep(1)
'''

_LSAN_REPORT = (
    "\n=================================================================\n"
    "==4242==ERROR: LeakSanitizer: detected memory leaks\n\n"
    "Direct leak of 77 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f in malloc\n    #1 0x55 in portico::proxy::Session::start() session.cc:42\n\n"
    "SUMMARY: AddressSanitizer: 77 byte(s) leaked in 1 allocation(s).\n")


class _FakeRequest:
    class node:  # noqa: N801 - stands in for pytest's item
        rep_call = None


def _fake_portico(tmp_path, name, report):
    script = tmp_path / name
    script.write_text(_FAKE_PORTICO % report)
    script.chmod(0o755)
    return Portico([], workdir=tmp_path / (name + "-work"), binary=str(script)).start(timeout=10)


def test_sanitizer_report_on_stderr_fails_the_test(tmp_path, monkeypatch):
    import conftest

    # Options the caller set come after the harness's defaults, so they win.
    monkeypatch.setenv("ASAN_OPTIONS", "quarantine_size_mb=64")
    p = _fake_portico(tmp_path, "leaky", _LSAN_REPORT)
    asan = [l for l in p.lines() if "ASAN_OPTIONS=" in l][0]
    assert "abort_on_error=1" in asan and "detect_leaks=1" in asan
    assert asan.endswith(":quarantine_size_mb=64"), asan
    assert "halt_on_error=1" in [l for l in p.lines() if "UBSAN_OPTIONS=" in l][0]
    assert "tsan.supp" in [l for l in p.lines() if "TSAN_OPTIONS=" in l][0]
    with pytest.raises(pytest.fail.Exception) as failed:
        conftest._report_and_cleanup(_FakeRequest(), [p], check_alive=False)
    text = str(failed.value)
    assert "sanitizer report" in text and "ERROR: LeakSanitizer: detected memory leaks" in text
    assert "Session::start()" in text  # the stack comes with it


def test_clean_stderr_passes(tmp_path):
    import conftest

    p = _fake_portico(tmp_path, "clean", "")
    conftest._report_and_cleanup(_FakeRequest(), [p], check_alive=False)  # no exception
    assert p.proc.returncode == 0


@pytest.mark.parametrize("report", [
    "==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020",
    "AddressSanitizer:DEADLYSIGNAL\n==1==ERROR: AddressSanitizer: SEGV on unknown address",
    "session.cc:12:3: runtime error: signed integer overflow",
    "WARNING: ThreadSanitizer: data race (pid=7)\n  Write of size 8",
    "ThreadSanitizer: reported 2 warnings",
])
def test_every_sanitizer_is_recognised(report):
    from harness import sanitizer_report

    text = "INFO [main] ready: x\nINFO [session] line\n" + report + "\nmore\n"
    found = sanitizer_report(text)
    assert found is not None and found.startswith(report.split("\n")[0])
    assert sanitizer_report("INFO [main] ready: x\nINFO [session] runtime ok\n") is None
