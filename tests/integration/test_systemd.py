"""Portico under a service manager (issue 12): the sd_notify protocol against
a real datagram socket standing in for systemd's, the privilege drop to
[process] user with real Dovecot behind it, and the shipped unit file
checked by systemd-analyze.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path


from harness import PASSWORD, REPO_ROOT, Portico, portico_bin


def notifications(sock: socket.socket, want: str, timeout: float = 15.0) -> list:
    """Reads datagrams until one has the line `want`; returns all read."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no %r from Portico within %.0fs; got %r" % (want, timeout, got))
        sock.settimeout(left)
        msg = sock.recv(4096).decode()
        got.append(msg)
        if want in msg.split("\n"):
            return got


def test_sd_notify_ready_reloading_stopping(backends, tmp_path, monkeypatch):
    """NOTIFY_SOCKET points at a datagram socket of the test: READY=1 comes
    when the listener already answers, SIGHUP gives RELOADING=1 with
    MONOTONIC_USEC (CLOCK_MONOTONIC, now) and then READY=1, SIGTERM gives
    STOPPING=1."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    p = Portico(backends)
    try:
        p.start()
        got = notifications(sock, "READY=1")
        assert len(got) == 1 and re.search(r"^STATUS=ready: listening on 127\.0\.0\.1:%d" % p.port, got[0], re.M), got
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
            assert c.recv(512).startswith(b"* OK"), "READY=1 before the listener answers"

        before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(p.pid, signal.SIGHUP)
        got = notifications(sock, "READY=1")
        after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert "RELOADING=1" in got[0].split("\n"), got
        usec = int(re.search(r"^MONOTONIC_USEC=(\d+)$", got[0], re.M).group(1))
        assert before_us <= usec <= after_us, (before_us, usec, after_us)
        assert "STATUS=ready: configuration reloaded" in got[-1].split("\n"), got

        # A refused reload still ends with READY=1 (the old config runs on).
        p.config_path.write_text("this is not toml = = =\n")
        os.kill(p.pid, signal.SIGHUP)
        got = notifications(sock, "READY=1")
        assert got[0].startswith("RELOADING=1") and "reload refused" in got[-1], got

        p.proc.send_signal(signal.SIGTERM)
        got = notifications(sock, "STOPPING=1")
        assert p.proc.wait(timeout=15) == 0
    finally:
        sock.close()
        p.cleanup()


def proc_ids(pid: int) -> dict:
    out = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"):
            out[key] = value.split()
    return out


def test_runs_as_the_configured_user_after_binding(backends, portico_factory):
    """Started as root with [process] user = "nobody" (and a privileged
    port): every thread runs as nobody:nogroup with no capabilities, IMAP
    still works through it against real Dovecot, the admin socket (handed to
    nobody, still owner-only) answers root's porticoctl, and a reload still
    reads the config."""
    assert os.geteuid() == 0, "this test starts Portico as root"
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup")
    low_port = next(port for port in range(900, 1000) if _free(port))
    p = portico_factory(backends, start=False, listen_port=low_port,
                        config={"process": {"user": "nobody", "group": "nogroup"}})
    os.chmod(p.workdir, 0o755)  # the reload reads the config as nobody
    p.write_config()
    os.chmod(p.config_path, 0o644)
    p.start()
    p.wait_for_line("running as user nobody (uid %d), group nogroup" % nobody.pw_uid, timeout=5)

    threads = os.listdir("/proc/%d/task" % p.pid)
    assert len(threads) >= 3, threads  # control loop and two workers
    for tid in threads:
        ids = {k: v for k, v in proc_ids(int(tid)).items()}
        assert ids["Uid"] == [str(nobody.pw_uid)] * 4, (tid, ids)
        assert ids["Gid"] == [str(nogroup.gr_gid)] * 4, (tid, ids)
        assert ids["Groups"] in ([], [str(nogroup.gr_gid)]), (tid, ids)
        assert int(ids["CapEff"][0], 16) == 0 and int(ids["CapPrm"][0], 16) == 0, (tid, ids)

    m = imaplib.IMAP4("127.0.0.1", low_port, timeout=10)
    try:
        assert m.login("alice", PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()

    st = os.stat(p.admin_socket)
    assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o600, st
    r = p.porticoctl("backend", "list")
    assert r.returncode == 0 and "mbx1" in r.stdout, r
    p.reload()
    assert p.porticoctl("stats").returncode == 0


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_refuses_to_start_when_the_user_cannot_be_had(backends, portico_factory):
    """A [process] user that does not exist stops start-up before anything is
    bound; started as an unprivileged user other than the configured one,
    Portico cannot switch and refuses to run."""
    p = portico_factory(backends, start=False, config={"process": {"user": "no-such-user-x"}})
    p.write_config()
    r = subprocess.run([portico_bin(), "--config", str(p.config_path)], capture_output=True, text=True,
                       timeout=20, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "[process] user 'no-such-user-x': no such user" in r.stderr, r
    r = subprocess.run([portico_bin(), "--check-config", str(p.config_path)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 1 and "no-such-user-x" in r.stderr, r

    # As nobody, asked to become root: the switch is impossible.
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="portico-nobody-"))  # /tmp: nobody can reach it
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    q = Portico(backends, workdir=work, config={"process": {"user": "root"},
                                                "admin": {"socket": str(work / "admin.sock")}})
    q.write_config()
    os.chmod(q.config_path, 0o644)

    def become_nobody():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    try:
        r = subprocess.run([portico_bin(), "--config", str(q.config_path)], capture_output=True, text=True,
                           timeout=20, stdin=subprocess.DEVNULL, preexec_fn=become_nobody)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert r.returncode == 1, r
    assert "cannot drop privileges: cannot switch to user root: running as uid %d, not root" % nobody.pw_uid \
        in r.stderr, r
    assert "ready:" not in r.stderr, r


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    """conf/systemd/portico.service, with ExecStart pointing at the built
    binary, verifies without a single warning (an unknown or misspelt key is
    only a warning, so the test checks stderr, not just the exit code)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: scripts/setup.sh installs systemd"
    unit = (REPO_ROOT / "conf/systemd/portico.service").read_text()
    for key in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "RuntimeDirectory=portico",
                "LogsDirectory=portico", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                "PrivateTmp=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                "AmbientCapabilities=CAP_NET_BIND_SERVICE", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                "SystemCallFilter=@system-service", "User=portico"):
        assert re.search(r"^%s$" % re.escape(key), unit, re.M), key
    local = tmp_path / "portico.service"
    local.write_text(unit.replace("/usr/sbin/portico", portico_bin()))
    r = subprocess.run([analyze, "verify", "--man=no", str(local)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r
    # The check bites: a misspelt key is reported.
    local.write_text(unit.replace("/usr/sbin/portico", portico_bin()).replace("ProtectHome=", "ProtectHom="))
    r = subprocess.run([analyze, "verify", "--man=no", str(local)], capture_output=True, text=True, timeout=60)
    assert "ProtectHom" in r.stderr, r
