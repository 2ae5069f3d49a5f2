"""Latency through Portico against Dovecot directly, with real clients.

The figures here are ratios measured in the same test against the same
Dovecot, never absolute timings: the machine is shared, so only "through
Portico costs at most k times direct" is a statement a test can make.
"""

import imaplib
import os
import shutil
import statistics
import tempfile
import time

import pytest

from harness import PASSWORD, Dovecot, make_message

APPENDS = 20  # timed per path, as issue 14 asks (medians of 20)


def _login(port: int, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    typ, data = m.login(user, PASSWORD)
    assert typ == "OK", data
    return m


def _timed_append(m: imaplib.IMAP4, message: bytes) -> float:
    """Wall time of one APPEND by imaplib. imaplib sends the literal and its
    final CRLF in two writes, with Nagle on (it leaves its socket as it is):
    what exposes a delayed-ACK stall on the path."""
    start = time.perf_counter()
    typ, data = m.append("INBOX", None, None, message)
    elapsed = time.perf_counter() - start
    assert typ == "OK", data
    return elapsed


@pytest.fixture
def shm_dovecot():
    """One Dovecot with its mail in memory when the machine has /dev/shm:
    APPEND then costs Dovecot no disk flush, so its direct time (a few ms)
    does not drown the 40 ms stall this test is about when the disk is busy."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="portico-latency-", dir=shm)
    d = Dovecot("mbx1", root=root)
    try:
        yield d.start()
    finally:
        d.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_small_append_has_no_delayed_ack_stall(shm_dovecot, portico_factory):
    # One backend, so Portico and the direct path append to the same Dovecot.
    mbx1 = shm_dovecot
    portico = portico_factory([mbx1])
    message = make_message("latency probe", body_bytes=200, marker="append-latency")
    direct = _login(mbx1.port, "alice")
    proxied = _login(portico.port, "alice")
    try:
        # One APPEND each before timing: the first one creates Dovecot's files.
        _timed_append(direct, message)
        _timed_append(proxied, message)
        # Alternating, so a burst of load from elsewhere on this shared
        # machine hits both paths alike.
        direct_times, proxied_times = [], []
        for _ in range(APPENDS):
            direct_times.append(_timed_append(direct, message))
            proxied_times.append(_timed_append(proxied, message))
    finally:
        for m in (direct, proxied):
            m.shutdown()
    d, p = statistics.median(direct_times), statistics.median(proxied_times)
    print("APPEND median: direct %.2f ms, through Portico %.2f ms (%.2fx)" % (d * 1e3, p * 1e3, p / d))
    assert p <= 2 * d, (
        "APPEND through Portico takes %.2f ms (median of %d), %.1fx the %.2f ms direct: "
        "a Nagle/delayed-ACK stall on one of the legs?" % (p * 1e3, len(proxied_times), p / d, d * 1e3))
