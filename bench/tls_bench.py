#!/usr/bin/python3
"""TLS benchmark: what TLS costs Portico in CPU and memory.

Measures, on this machine, against a real Portico (PORTICO_BIN or --bin):

  handshakes   Portico CPU (utime+stime from /proc/PID/stat, all threads)
               per connection over N sequential connections to an
               implicit-TLS listener: connect, handshake, read the greeting,
               close. Full handshakes (a fresh client session each time) and
               resumed ones (the first connection's session offered each
               time, every resumption checked), TLS 1.3 and TLS 1.2, for
               ECDSA P-256 and RSA-2048 server certificates. The same N
               connections to a plain listener give the non-TLS baseline
               (accept, greeting, session end), so TLS's own share is the
               difference. /proc/PID/task/*/schedstat (ns) is a
               finer-grained cross-check of the tick-based numbers.
  relay        FETCH BODY.PEEK[] of one 10 MiB message, repeated, through
               Portico to a plaintext Dovecot: client side plain vs client
               side TLS (and TLS on both sides, Portico -> Dovecot over
               implicit TLS). MB/s of literal bytes at the client, Portico
               CPU seconds per GB relayed.
  idle memory  Portico VmRSS before and after opening K simultaneous idle
               sessions (TLS: handshake done, greeting read; plain: greeting
               read), divided by K.

Everything is on loopback; every loop is bounded in count and every
socket read has a timeout. Certificates are made at run time
(tests/integration/tls_certs.py); backends are real Dovecot processes
(tests/integration/harness.py), so run as root with /usr/bin/python3:

  /usr/bin/python3 bench/tls_bench.py --results bench/RESULTS.md

--results writes the markdown section "## TLS" into that file, replacing
only a previous "## TLS" section; it is printed on stdout either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench" / "load"))

from harness import PASSWORD, Dovecot, Portico, free_port, make_message  # noqa: E402
from tls_certs import TestPki  # noqa: E402

import run_compare as rc  # noqa: E402  (shared RESULTS.md writer)

HEADING = "## TLS"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# /proc readings


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    stat = Path("/proc/%d/stat" % pid).read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    return cpu_ticks(pid) / CLK_TCK


def sched_ns(pid: int) -> int:
    """Sum of the threads' on-CPU time from schedstat, in ns."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            total += int(Path("/proc/%d/task/%s/schedstat" % (pid, tid)).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def io_counters(pid: int) -> dict:
    """rchar/wchar/syscr/syscw from /proc/PID/io (all threads)."""
    out = {}
    for line in Path("/proc/%d/io" % pid).read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def vm_rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/%d/status" % pid).read_text(), re.M)
    return int(m.group(1))


class CpuMeter:
    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.t0 = time.monotonic()
        self.ticks0 = cpu_ticks(self.pid)
        self.ns0 = sched_ns(self.pid)
        self.io0 = io_counters(self.pid)
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.cpu = (cpu_ticks(self.pid) - self.ticks0) / CLK_TCK
        self.sched = (sched_ns(self.pid) - self.ns0) / 1e9
        io1 = io_counters(self.pid)
        self.io = {k: io1[k] - self.io0.get(k, 0) for k in io1}


# --------------------------------------------------------------------------
# clients


def read_line(sock, buf: bytearray, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    while True:
        i = buf.find(b"\r\n")
        if i >= 0:
            line = bytes(buf[: i + 2])
            del buf[: i + 2]
            return line
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed; partial %r" % bytes(buf[:200]))
        buf += chunk


def connect(port: int, ctx=None, session=None, timeout: float = 10.0):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if ctx is None:
        return raw
    try:
        return ctx.wrap_socket(raw, server_hostname="mail.test", session=session)
    except BaseException:
        raw.close()
        raise


def one_connection(port: int, ctx=None, session=None):
    """connect, (handshake,) read the greeting, close. Returns the socket's
    (session, session_reused) for TLS."""
    s = connect(port, ctx, session)
    try:
        greeting = read_line(s, bytearray())
        if not greeting.startswith(b"* OK"):
            raise RuntimeError("bad greeting %r" % greeting)
        if ctx is None:
            return None, False
        return s.session, s.session_reused
    finally:
        s.close()


def client_ctx(ca: Path, version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    return ctx


def wait_sessions_closed(p: Portico, before: int, count: int, timeout: float = 30.0) -> None:
    """Waits until `count` more `session end` lines than `before` were logged,
    so one measurement's teardown does not leak into the next one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.count_lines("session end") >= before + count:
            return
        time.sleep(0.05)
    raise RuntimeError("only %d of %d sessions ended" % (p.count_lines("session end") - before, count))


def bench_connections(p: Portico, port: int, n: int, ctx=None, resume: bool = False) -> dict:
    session = None
    if resume:
        session, _ = one_connection(port, ctx)  # the session every later connection offers
        time.sleep(0.2)
    reused = 0
    lat = []
    before = p.count_lines("session end")
    with CpuMeter(p.pid) as m:
        for _ in range(n):
            t0 = time.monotonic()
            _, r = one_connection(port, ctx, session)
            lat.append(time.monotonic() - t0)
            reused += int(r)
        # Portico's side of each close (session end) belongs to the cost.
        wait_sessions_closed(p, before, n)
    if resume and reused != n:
        raise RuntimeError("only %d of %d connections resumed the session" % (reused, n))
    if not resume and ctx is not None and reused:
        raise RuntimeError("%d full-handshake connections were resumed" % reused)
    return {"n": n, "wall_s": m.wall, "cpu_s": m.cpu, "sched_s": m.sched,
            "cpu_ms_per": 1000 * m.cpu / n, "sched_ms_per": 1000 * m.sched / n,
            "wall_ms_per": 1000 * m.wall / n, "reused": reused,
            "lat_ms_p50": 1000 * sorted(lat)[n // 2], "lat_ms_p90": 1000 * sorted(lat)[n * 9 // 10]}


# --------------------------------------------------------------------------
# relay


def login(sock, buf, user):
    read_line(sock, buf)  # greeting
    sock.sendall(b'l LOGIN %s "%s"\r\n' % (user.encode(), PASSWORD.encode()))
    while True:
        line = read_line(sock, buf, 30)
        if line.startswith(b"l "):
            if not line.startswith(b"l OK"):
                raise RuntimeError("login: %r" % line)
            return
    # not reached


def fetch_literal(sock, buf, tag: bytes, timeout: float = 60.0) -> int:
    """Reads one FETCH's untagged response with its literal, then the tagged
    line; returns the literal's size."""
    size = -1
    while True:
        line = read_line(sock, buf, timeout)
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        if m:
            size = int(m.group(1))
            need = size
            take = min(need, len(buf))
            del buf[:take]
            need -= take
            view = bytearray(1 << 20)
            while need > 0:
                k = sock.recv_into(view, min(len(view), need))
                if k == 0:
                    raise EOFError("closed inside the literal")
                need -= k
            continue
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise RuntimeError("fetch: %r" % line)
            return size


def seed_message(dc: Dovecot, user: str, msg: bytes) -> None:
    """APPENDs msg straight to the Dovecot (plain port), not through Portico."""
    direct = socket.create_connection(("127.0.0.1", dc.port), timeout=30)
    try:
        buf = bytearray()
        login(direct, buf, user)
        direct.sendall(b"a APPEND INBOX {%d}\r\n" % len(msg))
        if not read_line(direct, buf, 30).startswith(b"+"):
            raise RuntimeError("no continuation for APPEND")
        direct.sendall(msg + b"\r\n")
        while True:
            line = read_line(direct, buf, 60)
            if line.startswith(b"a "):
                if not line.startswith(b"a OK"):
                    raise RuntimeError("APPEND: %r" % line)
                return
    finally:
        direct.close()


def bench_relay(p: Portico, port: int, ctx, user: str, reps: int) -> dict:
    s = connect(port, ctx, timeout=60)
    buf = bytearray()
    try:
        login(s, buf, user)
        s.sendall(b"s SELECT INBOX\r\n")
        while not read_line(s, buf, 30).startswith(b"s "):
            pass
        s.sendall(b"w0 FETCH 1 (BODY.PEEK[])\r\n")  # warm-up: page cache, buffers
        size = fetch_literal(s, buf, b"w0")
        total = 0
        with CpuMeter(p.pid) as m:
            for i in range(reps):
                tag = b"f%d" % i
                s.sendall(tag + b" FETCH 1 (BODY.PEEK[])\r\n")
                got = fetch_literal(s, buf, tag)
                if got != size:
                    raise RuntimeError("literal %d != %d" % (got, size))
                total += got
        s.sendall(b"z LOGOUT\r\n")
    finally:
        s.close()
    gb = total / 1e9
    return {"bytes": total, "wall_s": m.wall, "cpu_s": m.cpu, "sched_s": m.sched,
            "mb_per_s": total / 1e6 / m.wall, "cpu_s_per_gb": m.cpu / gb, "sched_s_per_gb": m.sched / gb,
            "read_calls": m.io.get("syscr", 0), "write_calls": m.io.get("syscw", 0),
            "bytes_per_read": m.io.get("rchar", 0) / max(1, m.io.get("syscr", 0)),
            "bytes_per_write": m.io.get("wchar", 0) / max(1, m.io.get("syscw", 0))}


# --------------------------------------------------------------------------
# idle memory


def bench_idle(p: Portico, port: int, ctx, k: int, settle: float = 2.0) -> dict:
    # Warm-up: first connections allocate pools, OpenSSL tables, arenas.
    for _ in range(20):
        one_connection(port, ctx)
    time.sleep(settle)
    rss0 = vm_rss_kib(p.pid)
    socks = []
    t0 = time.monotonic()
    try:
        for _ in range(k):
            s = connect(port, ctx)
            g = read_line(s, bytearray())
            if not g.startswith(b"* OK"):
                raise RuntimeError("bad greeting %r" % g)
            socks.append(s)
        opened = time.monotonic() - t0
        time.sleep(settle)
        rss1 = vm_rss_kib(p.pid)
        # All still open? (one byte of NOOP on each would cost; just check fds)
        fds = p.open_fds()
    finally:
        for s in socks:
            s.close()
    return {"k": k, "rss_before_kib": rss0, "rss_after_kib": rss1, "fds": fds,
            "kib_per_session": (rss1 - rss0) / k, "open_s": opened}


# --------------------------------------------------------------------------
# setup


def make_portico(binary, backends, pki_by_type, backend_overrides=None):
    """Portico with a plain listener (p.port) and one implicit-TLS listener
    per certificate key type."""
    p = Portico(backends, binary=binary)
    tls_ports = {}
    listen = [{"address": "127.0.0.1:%d" % p.port}]
    for kt, pki in pki_by_type.items():
        port = free_port()
        tls_ports[kt] = port
        listen.append({"address": "127.0.0.1:%d" % port, "tls": "implicit",
                       "cert": str(pki.mail.cert), "key": str(pki.mail.key)})
    cfg = {
        "listen": listen,
        "timeouts": {"prelogin": "10m", "tls_handshake": "10s"},
        "limits": {"max_connections": 20000, "max_connections_per_ip": 20000},
    }
    if backend_overrides:
        cfg["backend"] = backend_overrides
    p.config = cfg
    p.start()
    return p, tls_ports


def machine() -> dict:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s+(.*)$", out, re.M)
        model = m.group(1).strip() if m else model
    except (OSError, subprocess.SubprocessError):
        pass
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {"cpu": model, "cores": os.cpu_count(), "mem_gib": round(int(mem.group(1)) / 2**20, 1),
            "kernel": platform.release(), "openssl": ssl.OPENSSL_VERSION}


def portico_build(binary: str) -> str:
    cache = Path(binary).resolve().parents[1] / "CMakeCache.txt"
    try:
        m = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", cache.read_text(), re.M)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# report


def f(x, digits=2):
    return ("%%.%df" % digits) % x


def render(args, mach, build, results) -> str:
    hs = results["handshakes"]
    out = [HEADING, ""]
    out.append("Measured by `bench/tls_bench.py` (this section is its output). Command:")
    out.append("")
    out.append("```")
    out.append(results["command"])
    out.append("```")
    out.append("")
    out.append("Machine: %s, %d cores, %.0f GiB RAM, Linux %s, %s. Portico build: %s (%s), %d workers. "
               "The client (Python's ssl module), Portico and Dovecot share the same 2 cores, "
               "so wall-clock rates are those of the whole loopback system; CPU figures are "
               "Portico's own. Load average (1/5/15 min) at start %s, at end %s: other work on the "
               "machine competes for the same cores when these are well above 2."
               % (mach["cpu"], mach["cores"], mach["mem_gib"], mach["kernel"], mach["openssl"], build,
                  args.bin, 2, " ".join(mach["loadavg_start"]), " ".join(mach["loadavg_end"])))
    out.append("")
    out.append("### CPU per connection (implicit-TLS listener; connect, handshake, greeting, close)")
    out.append("")
    out.append("Portico CPU = utime+stime from /proc/PID/stat over N=%d sequential connections, / N "
               "(tick = %d ms); schedstat = the threads' on-CPU ns from /proc/PID/task/*/schedstat, "
               "a finer cross-check. Resumed: every connection offered the first connection's "
               "session and every one was resumed (checked). \"TLS share\" subtracts the plain "
               "listener's schedstat cost for the same sequence (accept, greeting, session end). "
               "Latency: the client's connect-to-greeting time (Python, one connection at a time); "
               "it includes the client's own crypto (~1 ms of Python/OpenSSL CPU per TLS "
               "connection) and scheduling on the shared cores."
               % (args.handshakes, 1000 // CLK_TCK))
    out.append("")
    out.append("| certificate | TLS | handshake | Portico CPU ms/conn | schedstat ms/conn | TLS share ms | "
               "client latency p50 / p90 ms |")
    out.append("|---|---|---|---:|---:|---:|---:|")
    base = hs["plain"]
    out.append("| — | none | (plain listener) | %s | %s | — | %s / %s |"
               % (f(base["cpu_ms_per"], 3), f(base["sched_ms_per"], 3), f(base["lat_ms_p50"]), f(base["lat_ms_p90"])))
    for key, r in hs.items():
        if key == "plain":
            continue
        kt, ver, kind = key.split("/")
        out.append("| %s | %s | %s | %s | %s | %s | %s / %s |" % (
            "ECDSA P-256" if kt == "ec" else "RSA-2048", ver, kind, f(r["cpu_ms_per"], 3),
            f(r["sched_ms_per"], 3), f(r["sched_ms_per"] - base["sched_ms_per"], 3), f(r["lat_ms_p50"]),
            f(r["lat_ms_p90"])))
    out.append("")
    out.append("### Relay throughput: FETCH BODY.PEEK[] of a %d MiB message, x%d per run, median of %d rounds"
               % (args.fetch_mib, args.fetch_reps, args.rounds))
    out.append("")
    out.append("One session through Portico to a Dovecot on loopback; MB/s counts literal bytes read by "
               "the client (1 MB = 10^6 B) over the wall time of the repetitions (after one warm-up "
               "FETCH); Portico CPU s/GB = Portico's utime+stime over the same window / GB relayed; "
               "read()/write() calls and bytes from /proc/PID/io (syscr/rchar, syscw/wchar; both "
               "sides of the relay together).")
    out.append("")
    out.append("| client side | backend side | MB/s (median; all rounds) | Portico CPU s/GB (same run; all rounds) | "
               "schedstat s/GB | Portico read() calls, avg bytes | write() calls, avg bytes |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for key, r in results["relay"].items():
        c, b = key.split("/")
        out.append("| %s | %s | %s (%s) | %s (%s) | %s | %d, %.0f | %d, %.0f |" % (
            c, b, f(r["mb_per_s"], 0), ", ".join(f(x, 0) for x in r["mb_per_s_all"]),
            f(r["cpu_s_per_gb"]), ", ".join(f(x) for x in r["cpu_s_per_gb_all"]), f(r["sched_s_per_gb"]),
            r["read_calls"], r["bytes_per_read"], r["write_calls"], r["bytes_per_write"]))
    out.append("")
    out.append("### Memory per idle session (%d open at once)" % args.idle)
    out.append("")
    out.append("Portico VmRSS (/proc/PID/status) after 20 warm-up connections and %.0f s of settling, "
               "then again with all %d sessions open (TLS: handshake done and greeting read; plain: "
               "greeting read), settled %.0f s; difference / %d. Certificates: ECDSA P-256, TLS 1.3."
               % (args.settle, args.idle, args.settle, args.idle))
    out.append("")
    out.append("| sessions | VmRSS before KiB | VmRSS after KiB | KiB per session |")
    out.append("|---|---:|---:|---:|")
    for key, r in results["idle"].items():
        out.append("| %d %s | %d | %d | %s |" % (r["k"], key, r["rss_before_kib"], r["rss_after_kib"],
                                                 f(r["kib_per_session"], 1)))
    out.append("")
    if results.get("notes"):
        for n in results["notes"]:
            out.append(n)
        out.append("")
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Rewrites only this script's section of bench/RESULTS.md."""
    rc.write_section(path, section, HEADING)


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("PORTICO_BIN", str(REPO / "build" / "proxy" / "portico")))
    ap.add_argument("--handshakes", type=int, default=500, help="connections per handshake row")
    ap.add_argument("--fetch-mib", type=int, default=10)
    ap.add_argument("--fetch-reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="relay rounds (median reported)")
    ap.add_argument("--idle", type=int, default=2000, help="idle sessions held open at once")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--key-types", default="ec,rsa")
    ap.add_argument("--build-type", default=None,
                    help="label for the report (default: CMAKE_BUILD_TYPE next to --bin)")
    ap.add_argument("--results", default=None, help="write the markdown section into this file")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    for v, lo, hi in ((args.handshakes, 1, 5000), (args.fetch_reps, 1, 200), (args.idle, 1, 5000),
                      (args.fetch_mib, 1, 100), (args.rounds, 1, 20)):
        if not lo <= v <= hi:
            ap.error("counts are bounded: %d not in [%d, %d]" % (v, lo, hi))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 200:
        ap.error("RLIMIT_NOFILE hard limit %d is too low for --idle %d" % (hard, args.idle))

    key_types = [k for k in args.key_types.split(",") if k]
    mach = machine()
    mach["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    build = args.build_type or portico_build(args.bin)
    cleanup = []
    results = {"command": "/usr/bin/python3 bench/tls_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "handshakes": {}, "relay": {}, "idle": {}, "notes": []}
    try:
        pkis = {}
        for kt in key_types:
            pkis[kt] = TestPki.create(key_type=kt)
            cleanup.append(pkis[kt].cleanup)
        ec = pkis.get("ec") or next(iter(pkis.values()))

        plain_dc = Dovecot("tlsbench-plain")
        cleanup.append(plain_dc.cleanup)
        plain_dc.start()
        tls_dc = Dovecot("tlsbench-tls", tls={"cert": ec.mail.cert, "key": ec.mail.key})
        cleanup.append(tls_dc.cleanup)
        tls_dc.start()

        # ---- handshakes: one Portico with a plain and a TLS listener per key type
        p, tls_ports = make_portico(args.bin, [plain_dc], pkis)
        cleanup.append(p.cleanup)
        print("tls_bench: portico pid %d, listeners plain %d tls %s" % (p.pid, p.port, tls_ports), file=sys.stderr)

        hs = results["handshakes"]
        one_connection(p.port)  # warm-up
        hs["plain"] = bench_connections(p, p.port, args.handshakes)
        for kt in key_types:
            for ver in ("1.3", "1.2"):
                ctx = client_ctx(pkis[kt].ca, ver)
                for _ in range(10):  # warm-up
                    one_connection(tls_ports[kt], ctx)
                hs["%s/TLSv%s/full" % (kt, ver)] = bench_connections(p, tls_ports[kt], args.handshakes, ctx)
                hs["%s/TLSv%s/resumed" % (kt, ver)] = bench_connections(
                    p, tls_ports[kt], args.handshakes, ctx, resume=True)
                print("tls_bench: %s TLSv%s full %.3f resumed %.3f ms CPU/conn" % (
                    kt, ver, hs["%s/TLSv%s/full" % (kt, ver)]["cpu_ms_per"],
                    hs["%s/TLSv%s/resumed" % (kt, ver)]["cpu_ms_per"]), file=sys.stderr)

        p.cleanup()

        # Idle memory, TLS then plain, each with a fresh Portico so the
        # earlier runs' allocations do not blur the numbers.
        p, tls_ports = make_portico(args.bin, [plain_dc], {"ec": ec})
        cleanup.append(p.cleanup)
        results["idle"]["TLS 1.3"] = bench_idle(p, tls_ports["ec"], client_ctx(ec.ca, "1.3"), args.idle, args.settle)
        p.cleanup()
        p, tls_ports = make_portico(args.bin, [plain_dc], {"ec": ec})
        cleanup.append(p.cleanup)
        results["idle"]["plain"] = bench_idle(p, p.port, None, args.idle, args.settle)
        p.cleanup()

        # Relay: the same message seeded directly into each Dovecot (not
        # through Portico); one Portico per backend kind, both kept up, and
        # the four rows alternate over the rounds so drift hits all of them.
        user = "user01"
        msg = make_message("tls bench", body_bytes=args.fetch_mib * 1024 * 1024 * 3 // 4, marker="tlsbench", seed=7)
        for dc in (plain_dc, tls_dc):
            seed_message(dc, user, msg)
        p_plain, ports_plain = make_portico(args.bin, [plain_dc], {"ec": ec})
        cleanup.append(p_plain.cleanup)
        backend = [{"name": tls_dc.name, "address": tls_dc.imaps_address, "tls": "implicit",
                    "ca": str(ec.ca), "server_name": "mail.test"}]
        p_tls, ports_tls = make_portico(args.bin, [tls_dc], {"ec": ec}, backend_overrides=backend)
        cleanup.append(p_tls.cleanup)
        tls_ctx = client_ctx(ec.ca, "1.3")
        rows = [
            ("plain/plain", p_plain, p_plain.port, None),
            ("TLS 1.3/plain", p_plain, ports_plain["ec"], tls_ctx),
            ("plain/TLS 1.3 (implicit)", p_tls, p_tls.port, None),
            ("TLS 1.3/TLS 1.3 (implicit)", p_tls, ports_tls["ec"], tls_ctx),
        ]
        runs = {name: [] for name, *_ in rows}
        for rnd in range(args.rounds):
            for name, pp, port, ctx in rows:
                r = bench_relay(pp, port, ctx, user, args.fetch_reps)
                runs[name].append(r)
                print("tls_bench: relay round %d %s: %.0f MB/s, %.2f CPU s/GB" % (
                    rnd + 1, name, r["mb_per_s"], r["cpu_s_per_gb"]), file=sys.stderr)
        for name, rs in runs.items():
            med = dict(sorted(rs, key=lambda r: r["mb_per_s"])[len(rs) // 2])
            med["mb_per_s_all"] = [r["mb_per_s"] for r in rs]
            med["cpu_s_per_gb_all"] = [r["cpu_s_per_gb"] for r in rs]
            results["relay"][name] = med
        p_plain.cleanup()
        p_tls.cleanup()
    finally:
        for c in reversed(cleanup):
            try:
                c()
            except Exception as e:  # keep cleaning up
                print("tls_bench: cleanup: %s" % e, file=sys.stderr)

    mach["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": mach, "build": build, **results}, indent=2))
    section = render(args, mach, build, results)
    sys.stdout.write(section)
    if args.results:
        write_section(Path(args.results), section)
        print("tls_bench: wrote section into %s" % args.results, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
