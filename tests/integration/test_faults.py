"""Faults with a defined client-visible result (issue 9), against real Dovecot.

Each test is self-contained: it starts what it needs, provokes one fault and
asserts what a client sees and what the operator's log says. Every wait is
bounded and every read has a timeout.
"""

import json
import re
import resource
import time
import urllib.error
import urllib.request

from harness import PASSWORD, ImapConn, wait_until

# --------------------------------------------------------------------------
# fd exhaustion (defect 11)

FD_LIMIT = 64
EMFILE_LINE = re.compile(r"out of file descriptors \((EMFILE|ENFILE)\b.*refused (\d+) (more )?connections?")
FD_PROBE_SETS = {"ImapProxyTestProbe": "IMAP.Proxy", "ImapCTPProbe": "IMAP",
                 "ImapSelfTestProbe": "IMAP.Protocol", "ImapDeepTestProbe": "IMAP.Protocol"}


def _low_nofile():
    # Runs in Portico's child before exec: soft and hard limit both, so that
    # Portico cannot raise it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _probes_ran_once(status_port) -> bool:
    for probe, health_set in FD_PROBE_SETS.items():
        url = "http://127.0.0.1:%d/probes/%s/%s" % (status_port, health_set, probe)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.loads(r.read().decode())["Targets"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                continue  # not configured (no probe_user)
            raise
        if not targets or any(not t["Results"] for t in targets):
            return False
    return True


def _refused_counts(p) -> list:
    return [int(m.group(2)) for m in (EMFILE_LINE.search(l) for l in p.lines()) if m]


def _greeting_or_bye(port) -> tuple:
    c = ImapConn(port, read_greeting=False, timeout=10)
    return c, c.readline()


def test_fd_exhaustion_answers_bye_logs_rate_limited_and_recovers(portico_factory, backends):
    p = portico_factory([backends[0]], start=False, preexec_fn=_low_nofile)
    # Probes once an hour: their first run (within 5 s of start) is awaited
    # below, so no probe connection competes for descriptors in the test.
    p.config = {"workers": 1,
                "health": {"probe": {n: {"interval": "1h"} for n in FD_PROBE_SETS}}}
    p.start()
    # At start: the limit could not be raised and is far below what the
    # default max_connections (10000) needs.
    warn = [l for l in p.lines() if "open-file limit %d (hard %d) is below" % (FD_LIMIT, FD_LIMIT) in l]
    assert warn and "max_connections = 10000" in warn[0], p.log_tail()
    assert wait_until(lambda: _probes_ran_once(p.status_port), 20.0, 0.1), "probes did not run"

    clients = []
    try:
        # Fill the descriptor table with pre-login sessions (one fd each).
        bye = None
        for _ in range(FD_LIMIT + 8):
            c, line = _greeting_or_bye(p.port)
            if line.startswith(b"* OK"):
                clients.append(c)
                continue
            bye = line
            data, how = c.read_until_closed(timeout=5)
            c.close()
            assert how == "eof" and data == b"", (data, how)
            break
        assert bye is not None, "no refusal after %d connections with a limit of %d" % (len(clients), FD_LIMIT)
        assert bye.startswith(b"* BYE [UNAVAILABLE] "), bye
        assert len(clients) >= 10, "only %d sessions fit under %d descriptors" % (len(clients), FD_LIMIT)

        # A burst of further clients: every one gets the BYE, and the log
        # gets at most one line a second, each with its count.
        burst = 5
        t0 = time.monotonic()
        for _ in range(burst):
            c, line = _greeting_or_bye(p.port)
            c.close()
            assert line.startswith(b"* BYE [UNAVAILABLE] "), line
        took = time.monotonic() - t0
        refused = burst + 1
        assert wait_until(lambda: sum(_refused_counts(p)) >= refused, 5.0), (_refused_counts(p), p.log_tail())
        counts = _refused_counts(p)
        assert sum(counts) == refused, counts
        assert counts[0] == 1, counts  # the first refusal is reported at once
        assert len(counts) <= 2 + int(took), (counts, took)
        assert all("EMFILE" in l for l in p.lines() if EMFILE_LINE.search(l))

        # The sessions that did fit are still served.
        assert clients[0].command("NOOP", tag="n1")[0].startswith(b"n1 OK")
    finally:
        for c in clients:
            c.close()

    # Descriptors back: new clients are served normally again, end to end.
    def served() -> bool:
        try:
            with ImapConn(p.port, timeout=5) as c:
                if not c.greeting.startswith(b"* OK"):
                    return False
                assert c.login("alice", PASSWORD).startswith(b"a001 OK")
                c.ok("SELECT INBOX")
                c.ok("LOGOUT")
                return True
        except (EOFError, OSError):
            return False

    assert wait_until(served, 10.0, 0.1), p.log_tail()
    # Several at once, as many as fit before.
    again = []
    try:
        for _ in range(10):
            c, line = _greeting_or_bye(p.port)
            again.append(c)
            assert line.startswith(b"* OK"), line
    finally:
        for c in again:
            c.close()
    assert sum(_refused_counts(p)) == refused, _refused_counts(p)
