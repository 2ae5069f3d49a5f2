"""Latency through Portico against Dovecot directly, with real clients.

The figures here are ratios measured in the same test against the same
Dovecot, never absolute timings: the machine is shared, so only "through
Portico costs at most k times direct" is a statement a test can make.
"""

import imaplib
import os
import shutil
import socket
import ssl
import statistics
import tempfile
import time

import pytest

from harness import PASSWORD, Dovecot, make_message, sanitizer_of
from tls_certs import TestPki

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


def _shm_dovecot(tls=None):
    """(Dovecot, its root): one Dovecot with its mail in memory when the
    machine has /dev/shm: APPEND then costs Dovecot no disk flush, so its
    direct time (a few ms) does not drown the 40 ms stall these tests are
    about when the disk is busy."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="portico-latency-", dir=shm)
    return Dovecot("mbx1", root=root, tls=tls), root


@pytest.fixture
def shm_dovecot():
    d, root = _shm_dovecot()
    try:
        yield d.start()
    finally:
        d.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shm_tls_dovecot():
    """(Dovecot with implicit TLS, the PKI its certificate comes from)."""
    pki = TestPki.create()
    d, root = _shm_dovecot(tls={"cert": pki.mail.cert, "key": pki.mail.key})
    try:
        yield d.start(), pki
    finally:
        d.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        pki.cleanup()


ATTEMPTS = 3  # rounds of APPENDS pairs; the first round within the bound passes


def _assert_append_within_2x(direct: imaplib.IMAP4, proxied: imaplib.IMAP4, what: str) -> None:
    """Medians of APPENDS alternating APPENDs per path, in up to ATTEMPTS
    rounds. A stall is a 40 ms delayed-ACK timer on every APPEND, so it fails
    every round; a burst of load from elsewhere on this shared 2-core
    machine (a build: every extra process hop waits for a core) fails one
    round, not three in a row, so a later round may pass."""
    message = make_message("latency probe", body_bytes=200, marker="append-latency")
    # A sanitizer build of Portico spends a few milliseconds of its own per
    # APPEND, so the ratio says nothing there; the stall this test is about
    # is the 40 ms delayed-ACK timer, which a 10 ms allowance still catches.
    allowance = 0.0 if sanitizer_of() is None else 0.010
    rounds = []
    try:
        # One APPEND each before timing: the first one creates Dovecot's files.
        _timed_append(direct, message)
        _timed_append(proxied, message)
        for _ in range(ATTEMPTS):
            # Alternating, so load from elsewhere hits both paths alike.
            direct_times, proxied_times = [], []
            for _ in range(APPENDS):
                direct_times.append(_timed_append(direct, message))
                proxied_times.append(_timed_append(proxied, message))
            d, p = statistics.median(direct_times), statistics.median(proxied_times)
            rounds.append((d, p))
            print("APPEND median: direct %.2f ms, %s %.2f ms (%.2fx)"
                  % (d * 1e3, what, p * 1e3, p / d))
            if p <= 2 * d + allowance:
                return
    finally:
        for m in (direct, proxied):
            m.shutdown()
    assert False, (
        "APPEND %s takes %s (medians of %d) against %s direct in %d rounds: "
        "a Nagle/delayed-ACK stall on one of the legs?"
        % (what, ", ".join("%.2f ms" % (p * 1e3) for _, p in rounds), APPENDS,
           ", ".join("%.2f ms" % (d * 1e3) for d, _ in rounds), len(rounds)))


def test_small_append_has_no_delayed_ack_stall(shm_dovecot, portico_factory):
    # One backend, so Portico and the direct path append to the same Dovecot.
    portico = portico_factory([shm_dovecot])
    _assert_append_within_2x(_login(shm_dovecot.port, "alice"), _login(portico.port, "alice"),
                             "through Portico")


class _Imap4Tls(imaplib.IMAP4_SSL):
    """IMAP4_SSL to 127.0.0.1 checking the certificate name `mail.test`."""

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname="mail.test")


def test_small_append_over_tls_has_no_delayed_ack_stall(shm_tls_dovecot, portico_factory):
    # The same over implicit TLS on both paths: Python's ssl sends the
    # literal and the CRLF as two TLS records, and the ACK that must not
    # wait is the TCP connection's under Portico's TLS transport.
    dovecot, pki = shm_tls_dovecot
    portico = portico_factory([dovecot], start=False)
    portico.config = {"listen": [{"address": "127.0.0.1:%d" % portico.port, "tls": "implicit",
                                  "cert": str(pki.mail.cert), "key": str(pki.mail.key)}]}
    portico.start()
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    conns = []
    for port in (dovecot.imaps_port, portico.port):
        m = _Imap4Tls("127.0.0.1", port, ssl_context=ctx, timeout=10)
        conns.append(m)
        typ, data = m.login("alice", PASSWORD)
        assert typ == "OK", data
    _assert_append_within_2x(conns[0], conns[1], "over TLS through Portico")
