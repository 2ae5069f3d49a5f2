"""Integration tests of Portico's IMAP protocol log (Exchange's IMAP4 log format).

The log is switched through the admin socket (or the config) while real
clients talk to real Dovecot backends; the tests read the CSV files the
writer thread produces. The writer drains every ~150 ms, so every wait for a
record is a bounded poll of the files.
"""

import base64
import re
import threading
import time
import uuid

from harness import (
    PASSWORD,
    PROTOCOL_LOG_HEADER_PREFIXES,
    ImapConn,
    logged_in,
    make_message,
    parse_protocol_log,
    plain_b64,
    protocol_log_files,
    read_protocol_log,
    status_of,
    wait_until,
)

FIELDS = ("dateTime,sessionId,seqNumber,sIp,cIp,user,duration,rqsize,rpsize,command,parameters,"
          "context").split(",")
FILE_NAME = re.compile(r"IMAP4\d{10}-\d+\.LOG")
DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# --------------------------------------------------------------------------
# helpers


def new_marker(prefix="plog"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def log_dir(portico):
    return portico.workdir / "log"


def all_bytes(directory) -> bytes:
    return b"".join(p.read_bytes() for p in protocol_log_files(directory))


def wait_rows(directory, pred, timeout=5.0, what="protocol log rows"):
    """Polls the files until pred(rows) holds; returns the rows."""
    rows = []

    def check():
        nonlocal rows
        rows = read_protocol_log(directory)
        return pred(rows)

    assert wait_until(check, timeout, 0.1), "timed out after %.1fs waiting for %s; have %d rows, last %r" % (
        timeout, what, len(rows), rows[-5:])
    return rows


def wait_quiet(directory, timeout=5.0) -> int:
    """Waits until the log stops growing (no change over > 2 writer ticks);
    returns its byte count."""
    state = {"size": -1, "since": time.monotonic()}

    def quiet():
        size = len(all_bytes(directory))
        now = time.monotonic()
        if size != state["size"]:
            state["size"], state["since"] = size, now
            return False
        return now - state["since"] >= 0.45

    assert wait_until(quiet, timeout, 0.05), "protocol log still growing after %.1fs" % timeout
    return state["size"]


def session_rows(rows, sid):
    return [r for r in rows if r["sessionId"] == sid]


def session_ids(portico, **filters) -> dict:
    """client port -> session id, from the admin socket's `sessions`."""
    words = ["sessions"]
    for k, v in filters.items():
        words += ["--" + k, v]
    reply = portico.admin(words)
    assert reply["ok"], reply
    return {int(s["client"].rsplit(":", 1)[1]): s["id"] for s in reply["sessions"]}


def end_line_id(portico, port) -> str:
    line = portico.wait_for_session_ends([port])[port][0]
    m = re.search(r"\bid=([0-9a-f]{16})\b", line)
    assert m, line
    return m.group(1)


def prove_writer_caught_up(portico, user="carol"):
    """A sentinel: logs one command of `user` (only) and waits for it, so
    whatever a session of the same worker submitted earlier is on disk too;
    then switches logging off again. Returns the sentinel's marker."""
    assert portico.admin(["protocol-log", "on", "--user", user])["ok"]
    c = logged_in(portico, user)
    marker = new_marker("sentinel")
    c.command("SEARCH SUBJECT %s" % marker)
    c.ok("LOGOUT")
    c.close()
    wait_rows(log_dir(portico), lambda rows: any(marker in r["parameters"] for r in rows),
              what="the sentinel command of %s" % user)
    assert portico.admin("protocol-log off")["ok"]
    return marker


class Busy(threading.Thread):
    """A logged-in session looping NOOP / SELECT / UID FETCH until stopped."""

    def __init__(self, portico, user):
        super().__init__(name="busy-%s" % user, daemon=True)
        self.conn = logged_in(portico, user)
        self.conn.ok("SELECT INBOX")
        self.user = user
        self.port = self.conn.local_port
        self.stop = threading.Event()
        self.commands = 0
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                for text in ("NOOP", "SELECT INBOX", "UID FETCH 1:* (FLAGS)"):
                    self.conn.ok(text)
                    self.commands += 1
                self.stop.wait(0.03)  # pacing, not synchronisation
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(timeout=15)
        assert not self.is_alive(), "%s did not stop" % self.name
        assert self.error is None, "%s failed: %r" % (self.name, self.error)


# --------------------------------------------------------------------------
# switching on and off under load


def test_switch_on_and_off_under_load(portico):
    directory = log_dir(portico)
    users = ["user%02d" % i for i in range(20)]
    busy = [Busy(portico, u) for u in users]
    try:
        for b in busy:
            b.start()
        ids = session_ids(portico)
        by_port = {b.port: ids[b.port] for b in busy}
        assert len(set(by_port.values())) == 20, by_port
        assert protocol_log_files(directory) == []  # off by default

        reply = portico.admin("protocol-log on")
        assert reply["ok"], reply
        assert reply["protocol_log"]["enabled"] is True and reply["protocol_log"]["writer_running"] is True

        # Every busy session's next commands are logged.
        wanted = {sid.encode() for sid in by_port.values()}
        assert wait_until(lambda: all(s in all_bytes(directory) for s in wanted), 10.0, 0.1), (
            "sessions never logged after `protocol-log on`: %s"
            % sorted(s for s in wanted if s not in all_bytes(directory)))
        status = portico.admin("protocol-log status")["protocol_log"]
        assert status["enabled"] is True and status["records_written"] > 0, status

        assert portico.admin("protocol-log off")["ok"]
        for b in busy:
            b.finish()
    finally:
        for b in busy:
            b.stop.set()
    wait_quiet(directory)
    rows_after_off = read_protocol_log(directory)
    rows = rows_after_off

    for b in busy:
        sid = by_port[b.port]
        mine = session_rows(rows, sid)
        assert mine, "no rows for %s" % b.user
        # Switched on mid-session: no Connect/LOGIN, numbering from 0.
        assert [int(r["seqNumber"]) for r in mine] == list(range(len(mine))), [r["seqNumber"] for r in mine]
        assert {r["command"] for r in mine} <= {"NOOP", "SELECT", "UID FETCH"}, {r["command"] for r in mine}
        for r in mine:
            assert r["user"] == b.user and r["cIp"] == "127.0.0.1:%d" % b.port, r
            assert r["context"].startswith("R=OK") and ";B=mbx" in r["context"], r

    # Off: new commands (of old and new sessions) leave no line.
    marker = new_marker("after-off")
    for b in busy[:5]:
        b.conn.command("SEARCH SUBJECT %s" % marker)
    late = logged_in(portico, "user20")
    late.command("SEARCH SUBJECT %s" % marker)
    late_port = late.local_port
    late.ok("LOGOUT")
    late.close()
    for b in busy:
        b.conn.close()
    prove_writer_caught_up(portico, user="carol")
    assert not wait_until(lambda: marker.encode() in all_bytes(directory), 0.5), "a command after off was logged"
    rows = read_protocol_log(directory)
    assert not [r for r in rows if r["cIp"].endswith(":%d" % late_port)], "a session started after off was logged"
    n = len(rows_after_off)
    assert rows[:n] == rows_after_off
    assert {r["user"] for r in rows[n:]} <= {"carol"}, "rows other than the sentinel's after off: %r" % [
        r for r in rows[n:] if r["user"] != "carol"][:5]


# --------------------------------------------------------------------------
# column values


def test_columns_of_a_known_session(backends, portico):
    directory = log_dir(portico)
    assert portico.admin("protocol-log on")["ok"]
    c = ImapConn(portico.port, timeout=30)
    port = c.local_port
    sent = {}

    def run(tag, text, literal=None):
        line = ("%s %s\r\n" % (tag, text)).encode()
        if literal is None:
            c.send(line)
            sent[tag] = len(line)
        else:
            c.send(line)
            cont = c.readline()
            assert cont.startswith(b"+"), cont
            c.send(literal + b"\r\n")
            sent[tag] = len(line) + len(literal) + 2
        tagged, untagged = c.read_response(tag)
        return tagged, untagged

    tagged, _ = run("L1", "LOGIN alice %s" % PASSWORD)
    assert status_of(tagged) == b"OK", tagged
    tagged, _ = run("S1", "SELECT INBOX")
    assert status_of(tagged) == b"OK", tagged
    marker = new_marker("cols")
    msg = make_message("columns", body_bytes=768 * 1024, marker=marker)
    assert len(msg) >= 1 << 20
    tagged, _ = run("A1", "APPEND INBOX {%d}" % len(msg), literal=msg)
    assert status_of(tagged) == b"OK", tagged
    uid = re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1).decode()
    tagged, untagged = run("F1", "UID FETCH %s (BODY.PEEK[])" % uid)
    assert status_of(tagged) == b"OK" and msg in b"".join(untagged), tagged
    search_params = 'SUBJECT "a,b \\"c\\""'
    tagged, _ = run("Q1", "SEARCH %s" % search_params)
    assert status_of(tagged) == b"OK", tagged
    tagged, _ = run("Z1", "LOGOUT")
    assert status_of(tagged) == b"OK", tagged
    c.close()

    sid = end_line_id(portico, port)
    assert re.fullmatch(r"[0-9a-f]{16}", sid)
    login_line = portico.wait_for_line(re.compile(r"id=%s login user=alice backend=(\S+)" % sid))[0]
    backend = re.search(r"backend=(\S+)", login_line).group(1)
    backend_address = next(b.address for b in backends if b.name == backend)

    rows = wait_rows(directory, lambda rows: any(r["sessionId"] == sid and r["command"] == "Disconnect"
                                                 for r in rows), what="the Disconnect row")
    mine = session_rows(rows, sid)
    commands = [r["command"] for r in mine]
    assert commands == ["Connect", "LOGIN", "SELECT", "APPEND", "UID FETCH", "SEARCH", "LOGOUT", "Disconnect"], commands
    assert [int(r["seqNumber"]) for r in mine] == list(range(len(mine)))
    for r in mine:
        assert DATE_TIME.fullmatch(r["dateTime"]), r
        assert r["cIp"] == "127.0.0.1:%d" % port, r
        assert int(r["duration"]) >= 0, r
    by_cmd = {r["command"]: r for r in mine}

    login = by_cmd["LOGIN"]
    assert login["parameters"] == "alice *****", login
    assert login["user"] == "alice" and login["context"] == "R=OK;B=%s" % backend, login
    assert login["sIp"] == backend_address, login

    relayed = {"SELECT": "S1", "APPEND": "A1", "UID FETCH": "F1", "SEARCH": "Q1", "LOGOUT": "Z1"}
    for name, tag in relayed.items():
        r = by_cmd[name]
        assert int(r["rqsize"]) == sent[tag], (name, r["rqsize"], sent[tag])
        assert int(r["rpsize"]) > 0, r
        assert r["context"].startswith("R=OK") and r["context"].endswith(";B=%s" % backend), r
        assert r["user"] == "alice" and r["sIp"] == backend_address, r
    assert by_cmd["SELECT"]["parameters"] == "INBOX"
    assert by_cmd["UID FETCH"]["parameters"] == "%s (BODY.PEEK[])" % uid
    assert int(by_cmd["UID FETCH"]["rpsize"]) > len(msg)
    assert max(int(by_cmd["APPEND"]["duration"]), int(by_cmd["UID FETCH"]["duration"])) > 0, by_cmd
    # CSV: a parameter with a comma and quotes is quoted, quotes doubled.
    assert by_cmd["SEARCH"]["parameters"] == search_params
    csv_field = '"SUBJECT ""a,b \\""c\\"""""'
    assert csv_field == '"' + search_params.replace('"', '""') + '"'
    assert (",SEARCH,%s," % csv_field).encode() in all_bytes(directory)
    # Who closes first after LOGOUT (client or backend) is a race.
    assert by_cmd["Disconnect"]["context"] in ("reason=logout", "reason=closed by peer"), by_cmd["Disconnect"]
    assert int(by_cmd["Disconnect"]["rqsize"]) == sum(sent.values()), by_cmd["Disconnect"]

    files = protocol_log_files(directory)
    assert 1 <= len(files) <= 2, files  # two only when the test ran across an hour boundary
    for f in files:
        assert FILE_NAME.fullmatch(f.name), f.name
        lines = f.read_bytes().decode().split("\r\n")
        for prefix, line in zip(PROTOCOL_LOG_HEADER_PREFIXES, lines[:5]):
            assert line.startswith(prefix), lines[:5]
        assert lines[0].startswith("#Software: Portico ")
        assert lines[1] == "#Version: 15.0.0.0"
        assert lines[2] == "#Log-type: IMAP4 Protocol Log"
        assert DATE_TIME.fullmatch(lines[3][len("#Date: "):]), lines[3]
        assert lines[4] == "#Fields: " + ",".join(FIELDS)
        assert not any(l.startswith("#") for l in lines[5:]), "header lines after the first five"


# --------------------------------------------------------------------------
# targeted trace with a TTL


def test_trace_one_user_until_ttl(portico):
    directory = log_dir(portico)
    alice, bob = Busy(portico, "alice"), Busy(portico, "bob")
    ids = session_ids(portico)
    alice_id, bob_id = ids[alice.port], ids[bob.port]
    try:
        alice.start()
        bob.start()
        reply = portico.admin(["protocol-log", "on", "--user", "alice", "--ttl", "3s"])
        started = time.monotonic()
        assert reply["ok"], reply
        status = reply["protocol_log"]
        assert status["enabled"] is True and status["filters"]["user"] == "alice", status
        assert 1 <= status["ttl_left_seconds"] <= 3, status

        wait_rows(directory, lambda rows: len(session_rows(rows, alice_id)) >= 3, what="alice's commands")
        # The trace ends by itself.
        assert wait_until(lambda: portico.admin("protocol-log status")["protocol_log"]["enabled"] is False,
                          3 + 3, 0.1), "trace still on %.1fs after a 3s TTL" % (time.monotonic() - started)
        assert time.monotonic() - started >= 2.5, "trace ended long before its TTL"
        portico.wait_for_line("protocol-log trace ended: its TTL passed")
        bob_commands = bob.commands
        alice.finish()
        bob.finish()
    finally:
        alice.stop.set()
        bob.stop.set()
    assert bob_commands > 0
    wait_quiet(directory)
    before = read_protocol_log(directory)
    assert session_rows(before, alice_id), "alice was never logged"
    assert not session_rows(before, bob_id), "bob's commands were logged by an alice-only trace"
    assert {r["user"] for r in before} == {"alice"}

    marker = new_marker("after-ttl")
    alice.conn.command("SEARCH SUBJECT %s" % marker)
    prove_writer_caught_up(portico, user="carol")
    assert not wait_until(lambda: marker.encode() in all_bytes(directory), 0.5), "alice logged after the TTL"
    after = [r for r in read_protocol_log(directory) if r["user"] != "carol"]
    assert len(after) == len(before)
    alice.conn.close()
    bob.conn.close()


# --------------------------------------------------------------------------
# rotation by size


def test_rotation_by_size(backends, portico_factory):
    # [protocol_log] max_file_size accepts any byte count (0 = no limit).
    p = portico_factory(backends, config={"protocol_log": {"enabled": True, "max_file_size": 4096}})
    directory = log_dir(p)
    c = logged_in(p, "dave")
    port = c.local_port
    c.ok("SELECT INBOX")
    for i in range(120):
        c.ok("SEARCH SUBJECT rotation-%03d" % i)
    c.ok("LOGOUT")
    c.close()
    sid = end_line_id(p, port)
    rows = wait_rows(directory, lambda rows: any(r["sessionId"] == sid and r["command"] == "Disconnect"
                                                 for r in rows), what="the Disconnect row")
    files = protocol_log_files(directory)
    assert len(files) >= 4, [f.name for f in files]
    for f in files:
        assert FILE_NAME.fullmatch(f.name), f.name
        data = f.read_bytes()
        assert len(data) <= 4096, "%s has %d bytes" % (f.name, len(data))
        headers, file_rows = parse_protocol_log(data)
        lines = data.decode().split("\r\n")
        assert [l.split(" ", 1)[0] + " " for l in lines[:5]] == list(PROTOCOL_LOG_HEADER_PREFIXES), lines[:6]
        assert len(headers) == 5, headers
        assert file_rows, "%s has no rows" % f.name
    mine = session_rows(rows, sid)
    assert [int(r["seqNumber"]) for r in mine] == list(range(len(mine)))
    searches = [r["parameters"] for r in mine if r["command"] == "SEARCH"]
    assert searches == ["SUBJECT rotation-%03d" % i for i in range(120)]
    # Files are numbered consecutively within each hour's period.
    periods: dict = {}
    for f in files:
        m = re.search(r"(\d{10})-(\d+)\.LOG$", f.name)
        periods.setdefault(m.group(1), []).append(int(m.group(2)))
    for period, numbers in periods.items():
        assert numbers == list(range(1, len(numbers) + 1)), (period, numbers)


# --------------------------------------------------------------------------
# an unwritable directory


def test_unwritable_directory_keeps_serving(backends, portico_factory, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the log directory's parent should be\n")
    p = portico_factory(backends, config={"protocol_log": {"directory": str(blocker / "log")}})
    reply = p.admin("protocol-log on")
    assert reply["ok"], reply
    c = logged_in(p, "erin")
    c.ok("SELECT INBOX")
    for _ in range(10):
        c.ok("NOOP")

    def dropped():
        s = p.admin("protocol-log status")["protocol_log"]
        return s["records_dropped"] > 0 and s["last_error"] != ""

    assert wait_until(dropped, 5.0, 0.1), p.admin("protocol-log status")
    status = p.admin("protocol-log status")["protocol_log"]
    assert status["records_written"] == 0, status
    assert "not-a-directory" in status["last_error"], status
    p.wait_for_line(re.compile(r"WARN \[protocol_log\].*not-a-directory"))
    # Still serving, on the same session and on new ones.
    c.ok("NOOP")
    c.ok("LOGOUT")
    c.close()
    c2 = logged_in(p, "frank")
    c2.ok("SELECT INBOX")
    c2.ok("LOGOUT")
    c2.close()
    assert p.running()
    assert blocker.is_file() and not (tmp_path / "log").exists()


# --------------------------------------------------------------------------
# redaction


def xoauth2_b64(user, token):
    return base64.b64encode(("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode()).decode()


def test_credentials_never_logged(backends, portico_factory):
    p = portico_factory(backends, config={"protocol_log": {"enabled": True}})
    directory = log_dir(p)
    wrong = "wrong-PW-%s" % uuid.uuid4().hex[:8]
    token = "ya29.tok-%s" % uuid.uuid4().hex
    plain_ir = plain_b64("alice")
    plain_cont = plain_b64("bob")
    xoauth = xoauth2_b64("alice", token)
    secrets = [PASSWORD, wrong, token, plain_ir, plain_cont, xoauth,
               base64.b64encode(PASSWORD.encode()).decode()]
    ports = []

    # LOGIN with atoms: logged as "alice *****".
    c = ImapConn(p.port)
    ports.append(c.local_port)
    tagged, _ = c.command("LOGIN alice %s" % wrong, tag="w1")
    assert status_of(tagged) == b"NO", tagged
    tagged, _ = c.command("LOGIN alice %s" % PASSWORD, tag="l1")
    assert status_of(tagged) == b"OK", tagged
    c.ok("LOGOUT")
    c.close()

    # AUTHENTICATE PLAIN with SASL-IR.
    c = ImapConn(p.port)
    ports.append(c.local_port)
    tagged, _ = c.command("AUTHENTICATE PLAIN %s" % plain_ir, tag="p1")
    assert status_of(tagged) == b"OK", tagged
    c.ok("LOGOUT")
    c.close()

    # AUTHENTICATE PLAIN with a continuation.
    c = ImapConn(p.port)
    ports.append(c.local_port)
    c.send("p2 AUTHENTICATE PLAIN\r\n")
    cont = c.readline()
    assert cont.startswith(b"+"), cont
    c.send(plain_cont + "\r\n")
    tagged, _ = c.read_response("p2")
    assert status_of(tagged) == b"OK", tagged
    c.ok("LOGOUT")
    c.close()

    # XOAUTH2: Dovecot here does not offer it, so the attempt ends in NO.
    c = ImapConn(p.port)
    ports.append(c.local_port)
    c.send("x1 AUTHENTICATE XOAUTH2 %s\r\n" % xoauth)
    while True:
        line = c.readline()
        if line.startswith(b"+"):
            c.send("\r\n")  # answer an error challenge
            continue
        if line.startswith(b"x1 "):
            break
    assert status_of(line) in (b"NO", b"BAD"), line
    c.ok("LOGOUT")
    c.close()

    p.wait_for_session_ends(ports)
    ends = {"127.0.0.1:%d" % port for port in ports}
    rows = wait_rows(directory, lambda rows: ends <= {r["cIp"] for r in rows if r["command"] == "Disconnect"},
                     what="the Disconnect rows of the four sessions")
    # Rows of different workers interleave: look at them per session.
    def of(port, command):
        return [r for r in rows if r["cIp"] == "127.0.0.1:%d" % port and r["command"] == command]

    logins = of(ports[0], "LOGIN")
    assert [(r["parameters"], r["user"], r["context"].split(" ")[0].split(";")[0]) for r in logins] == [
        ("alice *****", "alice", "R=NO"), ("alice *****", "alice", "R=OK")], logins
    auths = [of(port, "AUTHENTICATE") for port in ports[1:]]
    assert [[(r["parameters"], r["user"]) for r in a] for a in auths] == [
        [("PLAIN", "alice")], [("PLAIN", "bob")], [("XOAUTH2", "alice")]], auths
    assert auths[0][0]["context"].startswith("R=OK;B=mbx") and auths[1][0]["context"].startswith("R=OK;B=mbx")
    assert re.match(r"R=(NO|BAD)\b", auths[2][0]["context"]), auths[2]

    p.stop()  # the operational log is complete once Portico has exited
    haystacks = {str(f): f.read_bytes() for f in protocol_log_files(directory)}
    haystacks["portico log file"] = p.log_path.read_bytes()
    haystacks["portico stderr"] = p.log_text().encode()
    for name, data in haystacks.items():
        for secret in secrets:
            assert secret.encode() not in data, "%r appears in %s" % (secret, name)
    # The base64 payloads are not in there cut short or re-wrapped either.
    for payload in (plain_ir, plain_cont, xoauth):
        for name, data in haystacks.items():
            assert payload[:16].encode() not in data, "a prefix of a SASL payload is in %s" % name
