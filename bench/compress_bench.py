#!/usr/bin/python3
"""COMPRESS=DEFLATE benchmark: bytes on the client's wire and Portico CPU per
command, the same FETCH-heavy mix with and without COMPRESS, interleaved.

Starts one Dovecot (tests/integration/harness.py) and Portico in front of it
(plain listener), seeds one mailbox with text messages (license texts from
/usr/share/common-licenses with mail headers, ~8-30 KiB each, plus every
fourth message with a 12 KiB base64 attachment of random bytes, which does
not compress), then runs rounds alternating plain / COMPRESS: one session
per round (harness.DeflateConn: Python socket + zlib wbits=-15, the
client of tests/integration/test_compress.py), SELECT, then `--iterations` times the mix
  UID FETCH <n> BODY.PEEK[]   (one whole message, cycling)
  FETCH 1:20 (FLAGS ENVELOPE INTERNALDATE RFC822.SIZE)
  NOOP
each command sent after the previous answer. Client wire bytes are counted
at the socket (both directions); Portico CPU is the sum of its threads'
run time from /proc/<pid>/task/*/schedstat (ns) over the round. Prints a
markdown table of medians and the per-round rows.

Bounded: --rounds (default 6) x --iterations (default 300), every socket
read has a 30 s timeout.

Run as root (Dovecot needs it):
  PORTICO_BIN=build/proxy/portico /usr/bin/python3 bench/compress_bench.py
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402


def cpu_ns(pid: int) -> int:
    total = 0
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            total += int(open(path).read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def messages(count: int) -> list:
    texts = [open(p, "rb").read() for p in sorted(glob.glob("/usr/share/common-licenses/*"))
             if os.path.isfile(p)]
    rnd = random.Random(14)
    out = []
    for i in range(count):
        text = texts[i % len(texts)][:30000].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        head = ("From: Sender %d <s%d@example.com>\r\nTo: user00@example.com\r\n"
                "Subject: bench message %d\r\nDate: Mon, 01 Dec 2026 10:%02d:00 +0000\r\n"
                "Message-ID: <bench-%d@example.com>\r\nMIME-Version: 1.0\r\n" % (i, i, i, i % 60, i)).encode()
        if i % 4 == 3:
            b64 = base64.b64encode(rnd.randbytes(12 * 1024))
            att = b"\r\n".join(b64[j:j + 76] for j in range(0, len(b64), 76))
            body = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
                    b"Content-Type: text/plain\r\n\r\n" + text + b"\r\n--XX\r\n"
                    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + att + b"\r\n--XX--\r\n")
        else:
            body = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
        out.append(head + body)
    return out


def ok(c, text: str, tag: str) -> None:
    tagged, _ = c.command(text, tag)
    if not tagged.startswith((tag + " OK").encode()):
        raise RuntimeError("%s -> %r" % (text, tagged))


def run_round(port: int, compress: bool, iterations: int, pid: int) -> dict:
    c = harness.DeflateConn(socket.create_connection(("127.0.0.1", port), timeout=30), timeout=30)
    ok(c, 'LOGIN "bench" "%s"' % harness.PASSWORD, "l1")
    if compress and not c.start_compression("z1").startswith(b"z1 OK"):
        raise RuntimeError("COMPRESS DEFLATE refused")
    ok(c, "SELECT INBOX", "s1")
    wire0, cpu0, t0 = c.wire_in + c.wire_out, cpu_ns(pid), time.monotonic()
    commands = 0
    for i in range(iterations):
        ok(c, "UID FETCH %d BODY.PEEK[]" % (i % 20 + 1), "f%d" % i)
        ok(c, "FETCH 1:20 (FLAGS ENVELOPE INTERNALDATE RFC822.SIZE)", "e%d" % i)
        ok(c, "NOOP", "n%d" % i)
        commands += 3
    wire = c.wire_in + c.wire_out - wire0
    cpu, wall = cpu_ns(pid) - cpu0, time.monotonic() - t0
    ok(c, "LOGOUT", "o1")
    c.sock.close()
    return {"mode": "COMPRESS" if compress else "plain", "commands": commands,
            "wire_per_cmd": wire / commands, "cpu_us_per_cmd": cpu / 1000 / commands,
            "wall_ms_per_cmd": wall * 1000 / commands}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=300)
    args = ap.parse_args()

    d = harness.Dovecot("cmpbench", users=["bench"])
    p = None
    try:
        d.start()
        import imaplib
        m = imaplib.IMAP4("127.0.0.1", d.port, timeout=30)
        m.login("bench", harness.PASSWORD)
        for msg in messages(20):
            m.append("INBOX", None, None, msg)
        m.logout()
        p = harness.Portico([d])
        p.start()
        rows = []
        for r in range(args.rounds):
            compress = r % 2 == 1
            rows.append(run_round(p.port, compress, args.iterations, p.pid))
        load = os.getloadavg()
    finally:
        if p is not None:
            p.cleanup()
        d.cleanup()

    def med(mode, key):
        return statistics.median(x[key] for x in rows if x["mode"] == mode)

    print("| mode | client wire bytes / command | Portico CPU µs / command | wall ms / command |")
    print("|---|---:|---:|---:|")
    for mode in ("plain", "COMPRESS"):
        print("| %s | %.0f | %.1f | %.2f |" % (mode, med(mode, "wire_per_cmd"),
                                              med(mode, "cpu_us_per_cmd"), med(mode, "wall_ms_per_cmd")))
    print()
    print("Ratio COMPRESS/plain: wire %.3f, Portico CPU %.2f. Load average at the end: %.1f %.1f %.1f"
          % (med("COMPRESS", "wire_per_cmd") / med("plain", "wire_per_cmd"),
             med("COMPRESS", "cpu_us_per_cmd") / med("plain", "cpu_us_per_cmd"), *load))
    print()
    print("| round | mode | commands | wire B/cmd | CPU µs/cmd | wall ms/cmd |")
    print("|---:|---|---:|---:|---:|---:|")
    for i, x in enumerate(rows):
        print("| %d | %s | %d | %.0f | %.1f | %.2f |" % (i + 1, x["mode"], x["commands"], x["wire_per_cmd"],
                                                       x["cpu_us_per_cmd"], x["wall_ms_per_cmd"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
