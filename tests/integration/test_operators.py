"""Integration tests of what operators use around the health model (issue 12):
timed monitor overrides (Add-ServerMonitoringOverride -Duration), responders
in dry-run, the action history (GET /health/actions, `porticoctl actions`)
and who did what (SO_PEERCRED on the admin socket).

Real Dovecot backends and a real Portico process; the status endpoint is
read with http.client, the admin socket with porticoctl. Every state change
is awaited by polling with a deadline.
"""

from __future__ import annotations

import calendar
import http.client
import json
import os
import pwd
import re
import socket
import subprocess
import time


from harness import ImapConn, porticoctl_bin, wait_until

QUIET_PROBE = {"interval": "60s", "timeout": "5s", "retries": 0}
PROBES = ("ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe")


def get_json(portico, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", portico.status_port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (path, r.status, body)
        assert r.getheader("Content-Type", "").startswith("application/json"), r.getheaders()
        return json.loads(body)
    finally:
        conn.close()


def status_code(portico, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", portico.status_port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def monitor(portico, name: str, target: str) -> dict:
    for m in get_json(portico, "/health")["Monitors"]:
        if m["Name"] == name and m["TargetResource"] == target:
            return m
    raise AssertionError("no monitor %s/%s" % (name, target))


def actions(portico) -> list:
    body = get_json(portico, "/health/actions")
    assert list(body) == ["actions"], body
    for a in body["actions"]:
        assert set(a) == {"time", "kind", "action", "target", "reason", "by", "result"}, a
        assert a["kind"] in ("responder", "operator"), a
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["time"]), a
    return body["actions"]


def parse_time(text: str) -> float:
    t = time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) + int(text[20:23]) / 1000.0


def ctl(portico, *args, user=None):
    """porticoctl against this Portico; as `user` (a name) when given."""
    preexec = None
    if user is not None:
        pw = pwd.getpwnam(user)

        def preexec():  # noqa: F811 - runs in the child
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    return subprocess.run([porticoctl_bin(), "--socket", str(portico.admin_socket), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                          preexec_fn=preexec)


def quiet_probes(**fast) -> dict:
    tables = {name: dict(QUIET_PROBE) for name in PROBES}
    for name, settings in fast.items():
        tables[name] = dict(QUIET_PROBE, **settings)
    return tables


ROOT = "root (uid 0)"


# --------------------------------------------------------------------------


def test_timed_override_is_listed_and_expires_by_itself(backends, portico_factory):
    """`porticoctl monitor override M --target B --duration 3s`: /health shows
    the monitor overridden with its expiry and who set it, `porticoctl
    health` lists it; three seconds later it is gone by itself and the
    history says so. `override remove` ends one at once."""
    p = portico_factory(backends, config={"health": {"probe": quiet_probes()}})
    assert "Override" not in monitor(p, "ImapSelfTestMonitor", "mbx1")

    set_at = time.time()
    r = ctl(p, "monitor", "override", "ImapSelfTestMonitor", "--target", "mbx1", "--duration", "3s",
            "--state", "Repairing")
    assert r.returncode == 0, r
    assert re.search(r"ImapSelfTestMonitor/mbx1: Repairing until \S+Z \(by root \(uid 0\)\)", r.stdout), r.stdout

    m = monitor(p, "ImapSelfTestMonitor", "mbx1")
    assert m["AlertValue"] == "Repairing", m
    assert m["Override"]["State"] == "Repairing" and m["Override"]["By"] == ROOT, m
    expires = parse_time(m["Override"]["Expires"])
    assert set_at + 2.5 <= expires <= time.time() + 3.5, (set_at, m["Override"])
    assert "Override" not in monitor(p, "ImapSelfTestMonitor", "mbx2")
    table = ctl(p, "health", "IMAP.Protocol")
    assert table.returncode == 0, table
    row = next(l for l in table.stdout.splitlines() if l.startswith("ImapSelfTestMonitor") and " mbx1 " in l)
    assert "Repairing until %s by %s" % (m["Override"]["Expires"], ROOT) in row, table.stdout

    # It ends by itself at its expiry, not before.
    assert wait_until(lambda: "Override" not in monitor(p, "ImapSelfTestMonitor", "mbx1"), timeout=10)
    ended = time.time()
    assert ended >= expires - 0.05, (ended, expires)
    assert monitor(p, "ImapSelfTestMonitor", "mbx1")["AlertValue"] != "Repairing"
    hist = actions(p)
    assert hist[0]["action"] == "monitor override expired", hist
    assert hist[0]["target"] == "ImapSelfTestMonitor/mbx1" and hist[0]["by"] == ROOT, hist[0]
    assert hist[1]["action"] == "monitor override" and hist[1]["result"].startswith("until "), hist[1]
    assert hist[1]["by"] == ROOT and hist[1]["kind"] == "operator", hist[1]
    assert "--duration 3s" in hist[1]["reason"], hist[1]

    # Every target when --target is left out; removed before its time.
    r = ctl(p, "monitor", "override", "ImapSelfTestMonitor", "--duration", "2h")
    assert r.returncode == 0 and r.stdout.count("Disabled until") == 2, r
    assert {monitor(p, "ImapSelfTestMonitor", b)["AlertValue"] for b in ("mbx1", "mbx2")} == {"Disabled"}
    r = ctl(p, "monitor", "override", "remove", "ImapSelfTestMonitor", "--target", "mbx2")
    assert r.returncode == 0 and "override removed: ImapSelfTestMonitor/mbx2" in r.stdout, r
    assert "Override" not in monitor(p, "ImapSelfTestMonitor", "mbx2")
    assert monitor(p, "ImapSelfTestMonitor", "mbx1")["Override"]["State"] == "Disabled"

    # Refusals: no duration (usage, 2), a bad state or duration, no monitor (1).
    assert ctl(p, "monitor", "override", "ImapSelfTestMonitor").returncode == 2
    for args, why in ((["--duration", "2h", "--state", "Unhealthy"], "bad --state"),
                      (["--duration", "61d"], "bad --duration"),
                      (["--duration", "soon"], "bad --duration")):
        r = ctl(p, "monitor", "override", "ImapSelfTestMonitor", *args)
        assert r.returncode == 1 and why in r.stderr, (args, r)
    r = ctl(p, "monitor", "override", "NoSuchMonitor", "--duration", "1h")
    assert r.returncode == 1 and "no monitor NoSuchMonitor" in r.stderr, r
    refused = actions(p)[0]
    assert refused["action"] == "monitor override" and refused["result"].startswith("refused: "), refused


def test_dry_run_records_the_drain_and_does_not_drain(own_backends, portico_factory):
    """[health] responders = "dry-run", mbx2's Dovecot stopped, fast self
    tests: the drain the ladder takes shows in /health/actions with result
    dry-run, and mbx2 is NOT drained (/backends, `backend list`, /readyz)."""
    mbx1, mbx2 = own_backends
    p = portico_factory(own_backends, config={"health": {
        "responders": "dry-run",
        "probe": quiet_probes(ImapSelfTestProbe={"interval": "200ms", "timeout": "1s"}),
        "monitor": {"ImapSelfTestMonitor": {"unhealthy_after": 2, "healthy_after": 1}},
    }})
    assert get_json(p, "/health")["Responders"] == "dry-run"
    assert wait_until(lambda: monitor(p, "ImapSelfTestMonitor", "mbx2")["AlertValue"] == "Healthy", timeout=10)
    mbx2.stop()
    assert wait_until(lambda: any(a["action"] == "drain" and a["target"] == "mbx2" for a in actions(p)),
                      timeout=15), actions(p)
    drain = next(a for a in actions(p) if a["action"] == "drain" and a["target"] == "mbx2")
    assert drain["kind"] == "responder" and drain["result"] == "dry-run", drain
    assert drain["by"] == "ImapSelfTestMonitor" and "Unhealthy" in drain["reason"], drain
    assert monitor(p, "ImapSelfTestMonitor", "mbx2")["AlertValue"] == "Unhealthy"

    backends = {b["name"]: b for b in get_json(p, "/backends")["backends"]}
    assert backends["mbx2"]["state"] == "enabled" and not backends["mbx2"]["drained_by_responder"], backends
    listed = ctl(p, "backend", "list")
    assert re.search(r"^mbx2\s+enabled\b", listed.stdout, re.M), listed.stdout
    p.wait_for_line(re.compile(r"dry-run: would drain mbx2: "), timeout=5)
    assert status_code(p, "/readyz") == 200
    r = ctl(p, "actions")
    assert r.returncode == 0 and "Responders: dry-run" in r.stdout, r
    assert re.search(r"responder\s+drain\s+mbx2\s+ImapSelfTestMonitor\s+dry-run", r.stdout), r.stdout


def test_acting_responders_drain_the_same_failure(own_backends, portico_factory):
    """The control for the dry-run test: the same failure with responders =
    "act" drains mbx2 and records the drain with its real result."""
    mbx1, mbx2 = own_backends
    p = portico_factory(own_backends, config={"health": {
        "responders": "act",
        "probe": quiet_probes(ImapSelfTestProbe={"interval": "200ms", "timeout": "1s"}),
        "monitor": {"ImapSelfTestMonitor": {"unhealthy_after": 2, "healthy_after": 1}},
    }})
    assert wait_until(lambda: monitor(p, "ImapSelfTestMonitor", "mbx2")["AlertValue"] == "Healthy", timeout=10)
    mbx2.stop()
    assert wait_until(lambda: any(a["action"] == "drain" and a["target"] == "mbx2" for a in actions(p)),
                      timeout=15), actions(p)
    drain = next(a for a in actions(p) if a["action"] == "drain" and a["target"] == "mbx2")
    assert drain["result"] == "drained", drain
    backends = {b["name"]: b for b in get_json(p, "/backends")["backends"]}
    assert backends["mbx2"]["drained_by_responder"], backends


def test_operator_actions_record_who_did_them(backends, portico_factory):
    """Drain, enable, kick, monitor disable/enable, protocol-log on/off and
    reload through the admin socket land in the history with the caller's
    user from SO_PEERCRED: root, and `nobody` through a group socket."""
    p = portico_factory(backends, config={"admin": {"group": "nogroup"},
                                          "health": {"probe": quiet_probes()}})
    os.chmod(p.workdir, 0o711)  # nobody must reach the socket in it
    nobody = "nobody (uid %d)" % pwd.getpwnam("nobody").pw_uid
    assert ctl(p, "backend", "drain", "mbx1").returncode == 0
    r = ctl(p, "backend", "enable", "mbx1", user="nobody")
    assert r.returncode == 0, r
    assert ctl(p, "monitor", "disable", "ImapSelfTestMonitor", "mbx2").returncode == 0
    assert ctl(p, "monitor", "enable", "ImapSelfTestMonitor", "mbx2", user="nobody").returncode == 0
    assert ctl(p, "protocol-log", "on", "--user", "alice", "--ttl", "5m").returncode == 0
    assert ctl(p, "protocol-log", "off").returncode == 0
    c = ImapConn(p.port)
    assert c.login("alice").split(b" ")[1] == b"OK"
    r = ctl(p, "kick", "--user", "alice")
    assert r.returncode == 0, r
    assert ctl(p, "kick", "--user", "alice").returncode == 1  # nothing left to kick: refused, recorded
    assert ctl(p, "reload").returncode == 0
    p.reload()  # SIGHUP
    # Set-ServerComponentState ImapProxy Inactive: out of the load balancer.
    r = ctl(p, "component", "ImapProxy", "inactive", user="nobody")
    assert r.returncode == 0 and r.stdout == "ImapProxy: Inactive\n", r
    conn = http.client.HTTPConnection("127.0.0.1", p.status_port, timeout=10)
    conn.request("GET", "/readyz")
    ready = conn.getresponse()
    assert ready.status == 503 and "ImapProxy set Inactive by %s" % nobody in ready.read().decode()
    conn.close()
    assert get_json(p, "/health")["ComponentState"] == "Inactive"
    assert ImapConn(p.port).login("bob").split(b" ")[1] == b"OK", "Inactive must not refuse logins"
    assert ctl(p, "component", "ImapProxy", "active").returncode == 0
    assert status_code(p, "/readyz") == 200
    assert ctl(p, "sessions").returncode == 0  # a read: not recorded

    hist = [(a["action"], a["target"], a["by"], a["result"]) for a in reversed(actions(p))]
    assert hist == [
        ("backend drain", "mbx1", ROOT, "done"),
        ("backend enable", "mbx1", nobody, "done"),
        ("monitor disable", "ImapSelfTestMonitor/mbx2", ROOT, "done"),
        ("monitor enable", "ImapSelfTestMonitor/mbx2", nobody, "done"),
        ("protocol-log on", "user alice", ROOT, "done"),
        ("protocol-log off", "all sessions", ROOT, "done"),
        ("kick", "user alice", ROOT, "kicked 1"),
        ("kick", "user alice", ROOT, "refused: kick: no matching session"),
        ("reload", "configuration", ROOT, "done"),
        ("reload", "configuration", "signal SIGHUP", "done"),
        ("component inactive", "ImapProxy", nobody, "done"),
        ("component active", "ImapProxy", ROOT, "done"),
    ], hist
    assert all(a["kind"] == "operator" for a in actions(p))
    c.close()

    # Words that are not UTF-8 reach the history replaced, and the history
    # still serialises.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(p.admin_socket))
        s.sendall(b"kick --user \xff\xfeuser\n")
        assert b'"ok":false' in s.recv(65536)
    assert actions(p)[0]["target"] == "user \ufffd\ufffduser", actions(p)[0]
