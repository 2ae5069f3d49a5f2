#!/usr/bin/python3
"""Where a LOGIN's time goes through a proxy: the two hops and the backend.

Starts one Dovecot (harness.Dovecot "mbx1"), one Portico in front of it
with the backend pool on (--pool-size per worker, --workers), and Debian's
HAProxy (mode tcp, no PROXY header) in front of the same Dovecot. Each
round runs portico_load --login-only (--clients, paced by --think) against
direct, Portico and HAProxy in rotating order, while a packet socket on
`lo` (AF_PACKET, kernel receive timestamps, outgoing packets only) records
when each LOGIN and each tagged OK left its sender. A client's LOGIN is
paired with the proxy's copy of it to Dovecot and Dovecot's answer with
the proxy's copy to the client, which gives per login:

  in hop   client's LOGIN sent -> the proxy's LOGIN to Dovecot sent
  backend  the LOGIN to Dovecot sent -> Dovecot's tagged OK sent
  out hop  Dovecot's OK sent -> the proxy's OK to the client sent

(direct has only the backend part). A hop is the proxy's whole share: the
wake-up of its thread, its read, its own work and its write. HAProxy does
no IMAP work, so its hops are what relaying one packet costs on this
machine; Portico's hops minus HAProxy's are what its parsing, routing and
accounting add to a LOGIN.

The capture holds LOGIN payloads (the benchmark's own test password) in
memory only, to pair them; nothing of them is printed. Bounded: each round
stops itself after --duration; Dovecot, Portico and HAProxy are stopped at
the end. Loopback only. Run as root (packet socket, Dovecot).

    /usr/bin/python3 bench/login_hops.py --load-bin build/bench/load/portico_load \\
        --results bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench" / "load"))

import harness  # noqa: E402
from haproxy_harness import HAProxy  # noqa: E402
from run_compare import (find_load_bin, machine_busy_fraction, machine_model,  # noqa: E402
                         run_load, write_section)

HEADING = "## Login latency: where a LOGIN's time goes through a proxy (issue 14 item 3)"
ETH_P_ALL = 3
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
TAGGED_OK = re.compile(rb"[A-Za-z0-9]+ OK")


class Capture:
    """Outgoing TCP packets on lo that carry a LOGIN or a tagged OK:
    (kernel timestamp, source port, destination port, payload head)."""

    def __init__(self):
        self.packets: list = []
        self._stop = threading.Event()
        self._seen = threading.Event()
        self._marker = 0
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def take(self) -> list:
        """The packets so far. A UDP marker sent to lo now is seen after
        every packet sent before it, so waiting for it waits for them."""
        self._marker += 1
        self._seen.clear()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"login_hops marker %d" % self._marker, ("127.0.0.1", 9))
        if not self._seen.wait(10):
            raise RuntimeError("login_hops: the capture did not see its marker within 10 s")
        taken, self.packets = self.packets, []
        return taken

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, address = self._sock.recvmsg(65536, 64)
            except socket.timeout:
                continue
            if address[2] != PACKET_OUTGOING:  # lo shows each packet twice
                continue
            ip = data[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            if ip[9] == socket.IPPROTO_UDP:
                if tcp[8:] == b"login_hops marker %d" % self._marker:
                    self._seen.set()
                continue
            if ip[9] != socket.IPPROTO_TCP:
                continue
            payload = tcp[(tcp[12] >> 4) * 4:]
            if b" LOGIN " not in payload[:24] and not TAGGED_OK.match(payload[:12]):
                continue
            stamp = next((struct.unpack("qq", d[:16]) for _, kind, d in ancillary
                          if kind == SO_TIMESTAMPNS), None)
            if stamp is None:
                continue
            sport, dport = struct.unpack("!HH", tcp[:4])
            self.packets.append((stamp[0] + stamp[1] / 1e9, sport, dport, payload[:80]))


def backend_times(packets: list, backend: int) -> dict:
    """Client port -> LOGIN sent to the backend's tagged OK sent, for
    clients that talked to the backend directly."""
    sent, took = {}, {}
    for t, sport, dport, payload in packets:
        if dport == backend and b" LOGIN " in payload:
            sent[sport] = t
        elif sport == backend and dport in sent:
            took[dport] = t - sent.pop(dport)
    return took


def pair(packets: list, front: int | None, backend: int) -> dict:
    """Per-login parts from one round's packets. `front` is the proxy's
    listening port (None: the client talked to the backend directly)."""
    parts = {"in": [], "backend": [], "out": []}
    if front is None:
        parts["backend"] = list(backend_times(packets, backend).values())
        return parts
    from_client = {}  # client port -> (t, LOGIN payload)
    at_backend = {}  # proxy's backend-side port -> (t client, t proxy, client port)
    answered = {}  # client port -> (t client, t proxy, t backend)
    for t, sport, dport, payload in packets:
        if dport == front and b" LOGIN " in payload:
            from_client[sport] = (t, payload)
        elif dport == backend and b" LOGIN " in payload:
            same = [(t0, port) for port, (t0, p) in from_client.items() if p == payload and t0 <= t]
            if same:
                t0, port = min(same)
                del from_client[port]
                at_backend[sport] = (t0, t, port)
        elif sport == backend and dport in at_backend:
            t0, t1, port = at_backend.pop(dport)
            answered[port] = (t0, t1, t)
        elif sport == front and dport in answered:
            t0, t1, t2 = answered.pop(dport)
            parts["in"].append(t1 - t0)
            parts["backend"].append(t2 - t1)
            parts["out"].append(t - t2)
    return parts


IDLE_GAPS_MS = (0, 2, 20)


def idle_probe(capture: Capture, backend: int, samples: int, seed: int = 14) -> dict:
    """Dovecot's LOGIN time against how long the connection sat idle after
    the greeting: one client, connect, greeting, wait 0, 2 or 20 ms (in
    random order), LOGIN, LOGOUT, close, 10 ms apart. A pooled backend
    connection is one that sat idle; a client behind HAProxy sends its
    LOGIN straight after the greeting. Returns gap -> p50 µs."""
    rng = random.Random(seed)
    gap_of = {}
    capture.take()
    for i in range(samples):
        gap = rng.choice(IDLE_GAPS_MS)
        with socket.create_connection(("127.0.0.1", backend), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            gap_of[sock.getsockname()[1]] = gap
            reader = sock.makefile("rb")
            reader.readline()
            if gap:
                time.sleep(gap / 1000)  # the idle time being measured, not a wait for an event
            sock.sendall(b'a1 LOGIN "user%02d" "%s"\r\n' % (i % 20, harness.PASSWORD.encode()))
            while not reader.readline().startswith(b"a1 "):
                pass
            sock.sendall(b"a2 LOGOUT\r\n")
            while not reader.readline().startswith(b"a2 "):
                pass
        time.sleep(0.01)  # pacing between logins, as the paced load does
    took = backend_times(capture.take(), backend)
    return {gap: (p50_us([t for port, t in took.items() if gap_of.get(port) == gap]),
                  sum(1 for port in took if gap_of.get(port) == gap)) for gap in IDLE_GAPS_MS}


def p50_us(values: list) -> float:
    return statistics.median(values) * 1e6 if values else float("nan")


def markdown(meta: dict) -> str:
    def cell(v):
        return "%.0f" % v if v == v else "—"

    lines = [HEADING, ""]
    lines.append("Measured %s on %s (%d cores): machine %.0f%% busy before the rounds (1 s sample). "
                 "Command:" % (meta["when"], meta["model"], os.cpu_count(), meta["idle_busy"]))
    lines += ["", "    " + meta["command"], ""]
    lines.append(
        "%d clients (portico_load --login-only), each repeating connect, greeting, LOGIN, LOGOUT, "
        "close, then pausing a random %g-%g ms; %d rounds of %gs per target, targets in rotating "
        "order. Times are when each packet left its sender, from a packet socket on lo (kernel "
        "timestamps). In hop: client's LOGIN sent to the proxy's LOGIN to Dovecot sent; backend: "
        "that to Dovecot's tagged OK sent; out hop: that to the proxy's OK to the client sent. "
        "Portico: %d workers, backend pool %d per worker. Medians of the per-round p50s (µs):" % (
            meta["clients"], meta["think"] * 500, meta["think"] * 1500, meta["rounds"],
            meta["duration"], meta["workers"], meta["pool_size"]))
    lines += ["", "| target | logins paired | in hop | backend | out hop | both hops | total |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("direct", "direct"), ("portico", "Portico, pool %d" % meta["pool_size"]),
                        ("haproxy", "HAProxy (tcp)")):
        rows = meta["rounds_out"][name]
        med = {k: statistics.median(r[k] for r in rows) for k in ("in", "backend", "out")}
        hops = med["in"] + med["out"]
        lines.append("| %s | %d | %s | %s | %s | %s | %s |" % (
            label, sum(r["n"] for r in rows), cell(med["in"]), cell(med["backend"]),
            cell(med["out"]), cell(hops), cell(med["backend"] + (hops if hops == hops else 0))))
    lines += ["", "Per round (in / backend / out µs): " + "; ".join(
        "%s %s" % (name, " ".join("%s/%s/%s" % (cell(r["in"]), cell(r["backend"]), cell(r["out"]))
                                  for r in meta["rounds_out"][name]))
        for name in ("direct", "portico", "haproxy")), ""]
    if meta["idle"]:
        lines.append(
            "Dovecot's LOGIN against how long its connection sat idle after the greeting (direct, "
            "one client, %d logins, the gap chosen at random per login, 10 ms between logins; "
            "backend time as above):" % meta["idle_samples"])
        lines += ["", "| idle before LOGIN | logins | Dovecot's LOGIN p50 (µs) |", "|---:|---:|---:|"]
        for gap, (p50, n) in meta["idle"].items():
            lines.append("| %d ms | %d | %s |" % (gap, n, cell(p50)))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--think", type=float, default=0.05,
                    help="seconds each client pauses (0.5-1.5x) after a login")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--user-count", type=int, default=20)
    ap.add_argument("--portico-bin", default=None)
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--idle-samples", type=int, default=300,
                    help="logins of the idle-before-LOGIN probe against Dovecot (0: skip it)")
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("login_hops: run as root (packet socket, Dovecot test instances)")
    load_bin = find_load_bin(args.load_bin)
    d = harness.Dovecot("mbx1")
    p = harness.Portico([d], config={"workers": args.workers,
                                     "backend_pool": {"size": args.pool_size}},
                        binary=args.portico_bin or harness.portico_bin())
    lb = HAProxy()
    capture = None
    try:
        d.start()
        p.start()
        haproxy_port = lb.add_frontend("imap", [("127.0.0.1", d.port)], send_proxy=None)
        lb.start()
        idle_busy = 100 * machine_busy_fraction()
        capture = Capture()
        targets = [("direct", d.port, None), ("portico", p.port, p.port),
                   ("haproxy", haproxy_port, haproxy_port)]
        out = {name: [] for name, _, _ in targets}
        for i in range(args.rounds):
            for name, port, front in targets[i % 3:] + targets[:i % 3]:
                capture.take()
                report = run_load([load_bin, "--login-only", "--json", "--port", str(port),
                                   "--sessions", str(args.clients), "--duration",
                                   "%gs" % args.duration, "--users", "user%02d", "--user-count",
                                   str(args.user_count), "--password", harness.PASSWORD,
                                   "--think-time", "%gms" % (args.think * 1000)],
                                  timeout=args.duration + 60)
                parts = pair(capture.take(), front, d.port)
                row = {k: p50_us(v) for k, v in parts.items()}
                row["n"] = len(parts["backend"])
                out[name].append(row)
                print("login_hops: round %d %s: %d paired, in %.0f backend %.0f out %.0f µs, "
                      "errors %s" % (i + 1, name, row["n"], row["in"], row["backend"], row["out"],
                                     report.get("first_error") or 0), file=sys.stderr, flush=True)
        idle = idle_probe(capture, d.port, args.idle_samples) if args.idle_samples else None
        meta = {"idle": idle, "idle_samples": args.idle_samples, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "model": machine_model(), "idle_busy": idle_busy, "clients": args.clients,
                "think": args.think, "rounds": args.rounds, "duration": args.duration,
                "workers": args.workers, "pool_size": args.pool_size, "rounds_out": out,
                "command": "/usr/bin/python3 bench/login_hops.py " + " ".join(sys.argv[1:]).replace(
                    str(REPO) + "/", "")}
        section = markdown(meta)
        print(section)
        if args.results:
            write_section(Path(args.results), section, HEADING)
    finally:
        if capture:
            capture.close()
        lb.cleanup()
        p.cleanup()
        d.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
