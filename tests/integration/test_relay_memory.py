"""Memory a slow reader can make Portico hold, against a real Dovecot.

A logged-in client that pipelines many small commands and never reads its
answers must cost Portico a bounded amount of memory: Portico caps the
commands in flight per session (limits.max_commands_in_flight) and stops
reading the client there, and its write queues count the buffer memory they
pin, not just the payload. Once the client reads, every tagged answer
arrives, in order, and nothing is lost.
"""

import os
import re
import select
import time
from pathlib import Path

import pytest

from harness import ImapConn

COMMANDS = 50_000
CAP = 1000  # limits.max_commands_in_flight, the default


def vm_rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/%d/status" % pid).read_text(), re.M)
    return int(m.group(1))


# NOOP: Portico reads the commands far faster than Dovecot answers them
# (each unanswered command is a record in Portico), then the small answers
# queue up in front of the client. CAPABILITY: the answers are big enough to
# fill the socket buffers, Dovecot stops reading, and the commands pile up in
# front of Dovecot. Either way Portico must stop reading the client at the cap.
@pytest.mark.parametrize("command", ["NOOP", "CAPABILITY"])
def test_pipelined_commands_without_reading_hold_bounded_memory(portico_factory, backends, command,
                                                               monkeypatch):
    # In a sanitizer build AddressSanitizer keeps freed memory in quarantine
    # (256 MiB), which VmRSS would count as Portico's: turn it off for this
    # process only (no effect on other builds).
    asan = os.environ.get("ASAN_OPTIONS", "")
    monkeypatch.setenv("ASAN_OPTIONS", (asan + ":" if asan else "")
                       + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0")
    p = portico_factory(backends[:1])
    c = ImapConn(p.port, timeout=30)
    try:
        assert c.login("alice").startswith(b"a001 OK")
        # Warm the allocator with one full round of answers, so the baseline
        # includes what any busy session touches.
        c.send(b"".join(b"w%d NOOP\r\n" % i for i in range(2000)))
        while not c.readline().startswith(b"w1999 "):
            pass
        rss0 = vm_rss_kib(p.pid)

        payload = b"".join(b"n%d %s\r\n" % (i, command.encode()) for i in range(COMMANDS))
        sock = c.sock
        sock.setblocking(False)
        sent = 0
        peak = rss0
        # Phase 1: write as much as Portico takes, never read. Ends when all
        # is written or nothing more was taken for a second.
        last_progress = time.monotonic()
        deadline = last_progress + 30
        while sent < len(payload) and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 0.1)
            if writable:
                try:
                    n = sock.send(payload[sent:sent + 65536])
                except BlockingIOError:
                    n = 0
                if n:
                    sent += n
                    last_progress = time.monotonic()
            peak = max(peak, vm_rss_kib(p.pid))
            if time.monotonic() - last_progress > 1.0:
                break
        for _ in range(10):  # let Portico settle where it stopped
            time.sleep(0.1)
            peak = max(peak, vm_rss_kib(p.pid))
        grew_kib = peak - rss0
        session = p.admin("sessions")["sessions"][0]
        print("%s: sent %d of %d bytes without reading; Portico VmRSS grew by %d KiB; "
              "%d commands in flight" % (command, sent, len(payload), grew_kib,
                                          session["commands_in_flight"]))
        assert session["commands_in_flight"] <= CAP, session

        # Phase 2: read everything (sending the rest as Portico takes it).
        # Every command gets its tagged OK, in order.
        buf = c.buf
        c.buf = b""
        expected = 0
        deadline = time.monotonic() + 60
        while expected < COMMANDS:
            assert time.monotonic() < deadline, "only %d of %d answers" % (expected, COMMANDS)
            want_write = [sock] if sent < len(payload) else []
            readable, writable, _ = select.select([sock], want_write, [], 1.0)
            if writable:
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except BlockingIOError:
                    pass
            if readable:
                chunk = sock.recv(1 << 20)
                assert chunk, "Portico closed after %d answers" % expected
                buf += chunk
                lines = buf.split(b"\r\n")
                buf = lines.pop()
                for line in lines:
                    if line.startswith(b"* "):
                        continue
                    assert line.startswith(b"n%d OK " % expected), (expected, line)
                    expected += 1
        assert buf == b""
        sock.setblocking(True)
        c.buf = b""
        tagged, _ = c.command("LOGOUT")
        assert tagged.startswith(b"a"), tagged
    finally:
        c.close()
    assert grew_kib < 2048, "Portico grew by %d KiB while the client did not read" % grew_kib
