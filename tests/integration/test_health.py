"""Integration tests of Portico's health service (DESIGN.md, "Health model").

Real Dovecot backends and a real Portico process, as in the rest of this
folder. What Dovecot cannot do on demand is faked, and only that:
silent_server.py (accepts TCP, never greets) and slow_relay.py (a relay in
front of a real Dovecot that delays or stalls its answers).

Timing: probes and monitors run with short intervals (300-500 ms, 1 s
timeouts, unhealthy_after 2). Every state change is awaited by polling the
status endpoint until a bounded deadline; no fixed sleep is used to
synchronise. Where the design promises a time bound (a monitor turns
Unhealthy within about unhealthy_after x interval, a probe of a silent
server ends at its timeout), the test measures it.

Everything stays on loopback; every abuse test is bounded in count and time.
"""

from __future__ import annotations

import calendar
import http.client
import json
import math
import os
import re
import resource
import selectors
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from harness import PASSWORD, USERS, Dovecot, ImapConn, logged_in, make_message, wait_until
from silent_server import SilentServer
from slow_relay import SlowRelay

PROBE_USERS = ["probe-mbx1", "probe-mbx2", "probe-mbx3"]
ALL_USERS = list(USERS) + PROBE_USERS
PROBES = ("ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe")
PROBE_SETS = {
    "ImapProxyTestProbe": "IMAP.Proxy",
    "ImapCTPProbe": "IMAP",
    "ImapSelfTestProbe": "IMAP.Protocol",
    "ImapDeepTestProbe": "IMAP.Protocol",
}
GT60 = "AverageCommandProcessingTimeGt60sMonitor"
QUEUED = "RequestsQueuedGt500Monitor"

# Probes that should stay out of a test's way: one run in the first 5 s
# (the service's first-run jitter), then not again for a minute.
QUIET_PROBE = {"interval": "60s", "timeout": "5s", "retries": 0}


# --------------------------------------------------------------------------
# routing: Portico's weighted rendezvous hashing (proxy/src/routing.cc),
# used only to *choose* users; where they land is checked in the maildirs.

_M64 = (1 << 64) - 1


def _fnv1a64(text: str) -> int:
    h = 14695981039346656037
    for b in text.encode():
        h ^= b
        h = (h * 1099511628211) & _M64
    return h


def _mix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    x ^= x >> 33
    return x


def rendezvous_order(user: str, names) -> list:
    """Backend names best first for user, all weights 1, no map."""
    uh = _mix64(_fnv1a64(user.strip().lower()))
    scored = []
    for i, name in enumerate(names):
        u = ((_mix64(uh ^ _mix64(_fnv1a64(name))) >> 11) + 0.5) * 2.0 ** -53
        scored.append((-1.0 / math.log(u), -i, name))
    scored.sort(reverse=True)
    return [s[2] for s in scored]


def users_preferring(backend: str, names, count: int = 1) -> list:
    out = [u for u in USERS if rendezvous_order(u, names)[0] == backend][:count]
    assert len(out) == count, "not enough users whose first choice is %s" % backend
    return out


# --------------------------------------------------------------------------
# status endpoint client


def parse_time(text: str) -> float:
    """'2026-11-27T22:10:36.537Z' -> POSIX seconds."""
    base, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1000.0


class Status:
    """The status endpoint of one Portico; every request has a timeout."""

    def __init__(self, portico, token: str | None = None):
        self.portico = portico
        self.port = portico.status_port
        self.token = token

    def request(self, method: str, path: str, token: str | None = "default", timeout: float = 10.0,
                headers: dict | None = None):
        """-> (status, headers (lower-case names), body bytes). One connection per request."""
        if token == "default":
            token = self.token
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def json(self, path: str, method: str = "GET", expect: int = 200, timeout: float = 10.0) -> dict:
        status, headers, body = self.request(method, path, timeout=timeout)
        assert status == expect, "%s %s -> %d %r" % (method, path, status, body[:500])
        assert headers.get("content-type", "").startswith("application/json"), headers
        return json.loads(body)

    def monitors(self, glob: str = "") -> list:
        return self.json("/health" + ("?set=" + glob if glob else ""))["Monitors"]

    def monitor(self, name: str, target: str) -> dict:
        found = [m for m in self.monitors() if m["Name"] == name and m["TargetResource"] == target]
        assert len(found) == 1, "monitor %s/%s: %r" % (name, target, found)
        return found[0]

    def backends(self) -> dict:
        return {b["name"]: b for b in self.json("/backends")["backends"]}

    def metrics(self) -> str:
        status, headers, body = self.request("GET", "/metrics")
        assert status == 200, (status, body[:300])
        assert headers.get("content-type", "").startswith("text/plain"), headers
        return body.decode("utf-8")

    def probe_results(self, probe: str, target: str) -> list:
        """Results of one probe target, newest first."""
        body = self.json("/probes/%s/%s?target=%s" % (PROBE_SETS[probe], probe, target))
        assert [t["TargetResource"] for t in body["Targets"]] == [target], body
        return body["Targets"][0]["Results"]

    def wait(self, what: str, fetch, pred, timeout: float, interval: float = 0.05):
        """Polls fetch() until pred(value); returns (value, seconds waited)."""
        start = time.monotonic()
        deadline = start + timeout
        last = None
        while True:
            last = fetch()
            if pred(last):
                return last, time.monotonic() - start
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.1fs waiting for %s; last seen:\n%s\n--- portico log tail\n%s"
                                     % (timeout, what, json.dumps(last, indent=1)[:3000]
                                        if not isinstance(last, str) else last[:3000],
                                        self.portico.log_tail(25)))
            time.sleep(interval)

    def wait_monitor(self, name: str, target: str, values, timeout: float):
        values = {values} if isinstance(values, str) else set(values)
        return self.wait("%s/%s in %s" % (name, target, sorted(values)), lambda: self.monitor(name, target),
                         lambda m: m["AlertValue"] in values, timeout)

    def wait_backend(self, name: str, pred, what: str, timeout: float):
        return self.wait("backend %s %s" % (name, what), lambda: self.backends()[name], pred, timeout)


# --------------------------------------------------------------------------
# Prometheus text format (version 0.0.4)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$" % _NAME)
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')


def _parse_labels(text: str, line: str) -> tuple:
    labels = []
    pos = 0
    while pos < len(text):
        m = _LABEL_RE.match(text, pos)
        assert m, "bad label syntax at %r in %r" % (text[pos:], line)
        labels.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", "expected ',' at %r in %r" % (text[pos:], line)
            pos += 1
    names = [k for k, _ in labels]
    assert len(names) == len(set(names)), "repeated label name in %r" % line
    return tuple(labels)


def parse_prometheus(text: str) -> list:
    """Validates Prometheus text exposition and returns [(name, {labels}, value)].

    Checks: every line ends in LF; comments are HELP/TYPE (or free text);
    TYPE at most once per family and before its first sample; HELP at most
    once; a family's samples are contiguous; names are portico_-prefixed;
    values are floats; no sample (name + labels) appears twice; histograms
    have cumulative buckets ending in le="+Inf" equal to _count, and _sum.
    """
    assert text.endswith("\n"), "metrics text does not end with a newline"
    types: dict = {}
    helps: set = set()
    seen_samples: set = set()
    family_order: list = []
    out = []
    for line in text.split("\n")[:-1]:
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), "bad metric name in %r" % line
                assert name.startswith("portico_"), "metric %s is not portico_-prefixed" % name
                assert name not in family_order, "%s for %s after its samples: %r" % (parts[1], name, line)
                if parts[1] == "TYPE":
                    assert len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                    assert name not in types, "second TYPE for %s" % name
                    types[name] = parts[3]
                else:
                    assert name not in helps, "second HELP for %s" % name
                    assert len(parts) == 4 and parts[3].strip(), "empty HELP: %r" % line
                    helps.add(name)
            continue
        m = _SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name, label_text, value_text = m.group(1), m.group(2) or "", m.group(3)
        assert name.startswith("portico_"), "metric %s is not portico_-prefixed" % name
        labels = _parse_labels(label_text, line)
        try:
            value = float(value_text)
        except ValueError:
            raise AssertionError("bad value %r in %r" % (value_text, line))
        family = name
        if name not in types:
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[: -len(suffix)]
                if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                    family = base
                    break
        assert family in types, "sample %r has no TYPE line before it" % line
        if not family_order or family_order[-1] != family:
            assert family not in family_order, "samples of %s are not contiguous (%r)" % (family, line)
            family_order.append(family)
        key = (name, labels)
        assert key not in seen_samples, "duplicate sample %r" % line
        seen_samples.add(key)
        out.append((name, dict(labels), value))
    # Histograms: cumulative buckets, +Inf == _count, a _sum.
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series: dict = {}
        for name, labels, value in out:
            if name == family + "_bucket":
                assert "le" in labels, "bucket without le: %s %r" % (name, labels)
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                series.setdefault(rest, {"buckets": []})["buckets"].append((labels["le"], value))
        for name, labels, value in out:
            rest = tuple(sorted(labels.items()))
            if name == family + "_count" and rest in series:
                series[rest]["count"] = value
            if name == family + "_sum" and rest in series:
                series[rest]["sum"] = value
        for rest, s in series.items():
            les = [float(le) for le, _ in s["buckets"]]
            assert les == sorted(les), "%s%r: buckets out of order" % (family, rest)
            assert math.isinf(les[-1]), "%s%r: no le=\"+Inf\" bucket" % (family, rest)
            counts = [v for _, v in s["buckets"]]
            assert all(a <= b for a, b in zip(counts, counts[1:])), "%s%r: buckets not cumulative: %r" % (
                family, rest, counts)
            assert "count" in s and s["count"] == counts[-1], "%s%r: _count %r != +Inf bucket %r" % (
                family, rest, s.get("count"), counts[-1])
            assert "sum" in s, "%s%r: no _sum" % (family, rest)
    return out


def metric_value(samples: list, name: str, **labels):
    hits = [v for n, l, v in samples if n == name and all(l.get(k) == v for k, v in labels.items())]
    assert len(hits) <= 1, "%s%r matches %d samples" % (name, labels, len(hits))
    return hits[0] if hits else None


# --------------------------------------------------------------------------
# fixtures and config


@pytest.fixture
def pair():
    """A fresh mbx1/mbx2 pair that also knows the probe accounts."""
    made = []
    try:
        for name in ("mbx1", "mbx2"):
            d = Dovecot(name, users=ALL_USERS)
            made.append(d)
            d.start()
        yield made
    finally:
        for d in made:
            d.cleanup()


@pytest.fixture
def secrets(tmp_path):
    """write(name, text) -> path of a probe password file (outside Portico's workdir)."""

    def write(name: str, text: str) -> str:
        p = tmp_path / ("%s.pass" % name)
        p.write_text(text + "\n")
        os.chmod(p, 0o600)
        return str(p)

    return write


def backend_entry(name: str, address: str, password_file: str | None = None) -> dict:
    b = {"name": name, "address": address, "weight": 1, "forward_id": False, "proxy_protocol": False}
    if password_file:
        b["probe_user"] = "probe-" + name
        b["probe_password_file"] = password_file
    return b


def health_config(backends: list, probes: dict | None = None, monitors: dict | None = None, **top) -> dict:
    """backends: backend_entry() dicts. probes: name -> settings; the probes not
    named run QUIET_PROBE. monitors: name -> settings."""
    probe_tables = {name: dict(QUIET_PROBE) for name in PROBES}
    for name, settings in (probes or {}).items():
        probe_tables[name] = dict(QUIET_PROBE, **settings)
    cfg = {"backend": backends, "health": {"probe": probe_tables}}
    if monitors:
        cfg["health"]["monitor"] = monitors
    for k, v in top.items():
        cfg[k] = v
    return cfg


def fast(interval: str = "300ms", timeout: str = "1s") -> dict:
    return {"interval": interval, "timeout": timeout, "retries": 0}


def append_marker(portico, user: str) -> tuple:
    """Logs user in through Portico, APPENDs a message with a new marker;
    returns (marker, client port)."""
    marker = "health-%s" % uuid.uuid4().hex[:12]
    with logged_in(portico, user) as c:
        port = c.local_port
        tagged = c.append(make_message("health test", marker=marker))
        assert tagged.split(b" ")[1] == b"OK", tagged
        c.ok("LOGOUT")
    return marker, port


def landed_on(dovecots, user: str, marker: str) -> list:
    return [d.name for d in dovecots if d.messages_with(user, marker)]


def consecutive(results: list, pred) -> int:
    """How many results from the start of `results` satisfy pred."""
    n = 0
    for r in results:
        if not pred(r):
            break
        n += 1
    return n


# --------------------------------------------------------------------------
# 1. A backend goes down: monitors, drain, routing, metrics; and back.


def test_stopped_backend_is_drained_and_restored(pair, portico_factory, secrets):
    """Stop mbx1: its ImapSelfTestMonitor and ImapDeepTestMonitor turn
    Unhealthy after exactly unhealthy_after failures and within about
    unhealthy_after x interval; the responder drains it (/backends, /health,
    /metrics); a user whose first choice is mbx1 lands on mbx2 *without*
    Portico trying mbx1 first (that would be plain failover, not a drain).
    Start it again: the monitors turn Healthy after exactly healthy_after
    successes, mbx1 is undrained and its users land there again."""
    mbx1, mbx2 = pair
    pw = secrets("right", PASSWORD)
    unhealthy_after, healthy_after = 2, 2
    intervals = {"ImapSelfTestProbe": 0.3, "ImapDeepTestProbe": 0.4}
    cfg = health_config(
        [backend_entry(d.name, d.address, pw) for d in pair],
        probes={"ImapSelfTestProbe": fast("300ms"), "ImapDeepTestProbe": fast("400ms"),
                "ImapCTPProbe": fast("500ms"), "ImapProxyTestProbe": fast("500ms")},
        monitors={m: {"unhealthy_after": unhealthy_after, "healthy_after": healthy_after}
                  for m in ("ImapSelfTestMonitor", "ImapDeepTestMonitor")},
    )
    p = portico_factory(pair, config=cfg)
    st = Status(p)
    names = ["mbx1", "mbx2"]
    user = users_preferring("mbx1", names)[0]
    monitors = ("ImapSelfTestMonitor", "ImapDeepTestMonitor")

    for d in names:
        for m in monitors:
            st.wait_monitor(m, d, "Healthy", timeout=10)
    marker, _ = append_marker(p, user)
    assert landed_on(pair, user, marker) == ["mbx1"], "precondition: %s routes to mbx1" % user

    # -- down -------------------------------------------------------------
    t0 = time.monotonic()
    mbx1.stop()
    bound = unhealthy_after * max(intervals.values()) + 2.5
    for m in monitors:
        mon, _ = st.wait_monitor(m, "mbx1", "Unhealthy", timeout=15)
        took = time.monotonic() - t0
        assert took <= bound, "%s took %.2fs to turn Unhealthy (bound %.2fs)" % (m, took, bound)
        assert "connect" in mon["Error"], mon
        assert mon["FirstAlertObservedTime"] is not None, mon
        # Exactly unhealthy_after failures in a row caused the alert: the
        # results up to FirstAlertObservedTime end in that many failures,
        # preceded by a success.
        probe = m.replace("Monitor", "Probe")
        alert_at = parse_time(mon["FirstAlertObservedTime"])
        before = [r for r in st.probe_results(probe, "mbx1") if parse_time(r["ExecutionEndTime"]) <= alert_at]
        fails = consecutive(before, lambda r: r["ResultType"] != "Succeeded")
        assert fails == unhealthy_after, "%s: %d failures before the alert, not %d: %r" % (
            m, fails, unhealthy_after, [(r["ResultType"], r["ExecutionEndTime"]) for r in before[:6]])
        assert before[fails]["ResultType"] == "Succeeded"
        assert before[0]["FailureContext"] == "connect", before[0]
    for m in monitors:
        assert st.monitor(m, "mbx2")["AlertValue"] == "Healthy"

    b, _ = st.wait_backend("mbx1", lambda b: b["drained_by_responder"], "drained by the responder", 5)
    assert b["state"] == "drained-by-responder" and not b["drained_by_operator"], b
    assert st.backends()["mbx2"]["state"] == "enabled"
    health = st.json("/health?set=IMAP.Protocol")
    assert {m["HealthSetName"] for m in health["Monitors"]} == {"IMAP.Protocol"}
    drains = [a for a in health["ResponderActions"] if a["Step"] == "drain" and a["TargetResource"] == "mbx1"]
    assert drains and drains[-1]["Monitor"] in monitors, health["ResponderActions"]
    report = {s["HealthSet"]: s for s in st.json("/health/report")["HealthSets"]}
    assert report["IMAP.Protocol"]["AlertValue"] == "Unhealthy", report
    samples = parse_prometheus(st.metrics())
    assert metric_value(samples, "portico_backend_drained", backend="mbx1", by="responder") == 1
    assert metric_value(samples, "portico_backend_drained", backend="mbx2", by="responder") == 0
    for m in monitors:
        assert metric_value(samples, "portico_monitor_state", monitor=m, target="mbx1") == 3  # Unhealthy
        assert metric_value(samples, "portico_monitor_unhealthy", monitor=m, target="mbx1") == 1
        assert metric_value(samples, "portico_monitor_state", monitor=m, target="mbx2") == 1
    assert metric_value(samples, "portico_probe_result", probe="ImapSelfTestProbe", target="mbx1") == 0
    status, _, body = st.request("GET", "/readyz")
    assert status == 200, "one backend left: still ready (%r)" % body

    marker, port = append_marker(p, user)
    assert landed_on(pair, user, marker) == ["mbx2"], "a drained backend's user must land on mbx2"
    ends = p.wait_for_session_ends([port])[port]
    assert "backend=mbx2" in ends[0], ends
    mine = re.compile(r"client=127\.0\.0\.1:%d\b" % port)
    tried = [l for l in p.lines() if mine.search(l) and "connect failed" in l]
    assert not tried, "Portico tried the drained backend first (failover, not drain): %r" % tried

    # -- up again ---------------------------------------------------------
    mbx1.start()
    for m in monitors:
        mon, _ = st.wait_monitor(m, "mbx1", "Healthy", timeout=15)
        assert mon["FirstAlertObservedTime"] is None, mon
        probe = m.replace("Monitor", "Probe")
        healthy_at = parse_time(mon["LastTransitionTime"])
        before = [r for r in st.probe_results(probe, "mbx1") if parse_time(r["ExecutionEndTime"]) <= healthy_at]
        oks = consecutive(before, lambda r: r["ResultType"] == "Succeeded")
        assert oks == healthy_after, "%s turned Healthy after %d successes, not %d: %r" % (
            m, oks, healthy_after, [(r["ResultType"], r["ExecutionEndTime"]) for r in before[:6]])
    b, _ = st.wait_backend("mbx1", lambda b: b["state"] == "enabled", "enabled again", 5)
    assert not b["drained_by_responder"], b
    actions = st.json("/health")["ResponderActions"]
    assert any(a["Step"] == "undrain" and a["TargetResource"] == "mbx1" for a in actions), actions
    samples = parse_prometheus(st.metrics())
    assert metric_value(samples, "portico_backend_drained", backend="mbx1", by="responder") == 0
    marker, _ = append_marker(p, user)
    assert landed_on(pair, user, marker) == ["mbx1"], "restored backend's user must land on mbx1 again"


# --------------------------------------------------------------------------
# 2. A backend that accepts TCP and never greets.


def test_silent_backend_probes_time_out_at_greeting(pair, portico_factory, secrets):
    """A third backend that accepts and never greets: its self and deep
    probes end TimedOut at step `greeting` at their timeout (not hanging,
    not holding connections), an invoked probe answers within the timeout,
    it gets drained, and Portico keeps serving the other backends."""
    pw = secrets("right", PASSWORD)
    timeout_s = 1.0
    silent = SilentServer().start()
    try:
        entries = [backend_entry(d.name, d.address, pw) for d in pair]
        entries.append(backend_entry("mbx3", silent.address, pw))
        cfg = health_config(
            entries,
            probes={"ImapSelfTestProbe": fast("500ms"), "ImapDeepTestProbe": fast("500ms")},
            monitors={m: {"unhealthy_after": 2, "healthy_after": 2}
                      for m in ("ImapSelfTestMonitor", "ImapDeepTestMonitor")},
        )
        p = portico_factory(pair, config=cfg)
        st = Status(p)
        names = ["mbx1", "mbx2", "mbx3"]

        for probe in ("ImapSelfTestProbe", "ImapDeepTestProbe"):
            results, _ = st.wait("a %s result for mbx3" % probe, lambda: st.probe_results(probe, "mbx3"),
                                 lambda rs: len(rs) >= 2, timeout=10)
            for r in results:
                assert r["ResultType"] == "TimedOut", r
                assert r["FailureContext"] == "greeting", r
                took = parse_time(r["ExecutionEndTime"]) - parse_time(r["ExecutionStartTime"])
                assert timeout_s - 0.05 <= took <= timeout_s + 0.5, "%s ran %.3fs with a 1 s timeout: %r" % (
                    probe, took, r)
                assert "greeting" in r["Error"], r
            # Meanwhile the real backends pass.
            assert st.probe_results(probe, "mbx1")[0]["ResultType"] == "Succeeded"

        # An invoked probe answers at its timeout, not later.
        t = time.monotonic()
        r = st.json("/probes/IMAP.Protocol/ImapSelfTestProbe?target=mbx3", method="POST", timeout=10)
        took = time.monotonic() - t
        assert r["ResultType"] == "TimedOut" and r["FailureContext"] == "greeting", r
        assert took <= timeout_s + 1.0, "POST took %.2fs with a 1 s probe timeout" % took

        # Timed-out probes close their connections: nothing piles up.
        assert silent.accepted >= 4, silent.accepted
        assert wait_until(lambda: silent.open_connections() <= 3, 5), \
            "%d probe connections left open on the silent backend" % silent.open_connections()

        st.wait_monitor("ImapSelfTestMonitor", "mbx3", "Unhealthy", timeout=10)
        st.wait_backend("mbx3", lambda b: b["drained_by_responder"], "drained", 5)

        # Portico keeps serving: users of mbx1 and mbx2 work, and a user
        # whose first choice is the silent backend lands on its second.
        for backend in ("mbx1", "mbx2"):
            u = [x for x in USERS if rendezvous_order(x, names)[0] == backend][0]
            marker, _ = append_marker(p, u)
            assert landed_on(pair, u, marker) == [backend], (u, backend)
        u3 = users_preferring("mbx3", names)[0]
        second = rendezvous_order(u3, names)[1]
        t = time.monotonic()
        marker, _ = append_marker(p, u3)
        assert landed_on(pair, u3, marker) == [second]
        assert time.monotonic() - t < 5, "a drained silent backend still delays logins"
        status, _, _ = st.request("GET", "/readyz")
        assert status == 200
    finally:
        silent.stop()


# --------------------------------------------------------------------------
# 3. A slow backend trips AverageCommandProcessingTimeGt60sMonitor.


def test_slow_backend_trips_average_processing_time(pair, portico_factory):
    """slow_relay.py delays every answer of mbx1 by 300 ms. With the Gt60
    monitor's threshold at 100 ms (2 samples, every 300 ms) it turns
    Unhealthy for mbx1 only; mbx2's stays Healthy; it only escalates (no
    drain). Fast answers afterwards bring the average down and it recovers."""
    mbx1, mbx2 = pair
    relay = SlowRelay(("127.0.0.1", mbx1.port), delay=0.3).start()
    try:
        cfg = health_config(
            [backend_entry("mbx1", relay.address), backend_entry("mbx2", mbx2.address)],
            monitors={GT60: {"threshold": 100, "samples": 2, "healthy_after": 2, "interval": "300ms"}},
        )
        p = portico_factory(pair, config=cfg)
        st = Status(p)
        names = ["mbx1", "mbx2"]
        slow_user = users_preferring("mbx1", names)[0]
        fast_user = users_preferring("mbx2", names)[0]

        slow = logged_in(p, slow_user, timeout=10)
        quick = logged_in(p, fast_user)
        try:
            slow.ok("SELECT INBOX")
            quick.ok("SELECT INBOX")
            for _ in range(4):
                t = time.monotonic()
                slow.ok("NOOP")
                assert time.monotonic() - t >= 0.25, "the relay did not delay the answer"
                quick.ok("NOOP")
            mon, _ = st.wait_monitor(GT60, "mbx1", "Unhealthy", timeout=10)
            assert mon["TargetResource"] == "mbx1" and mon["HealthSetName"] == "IMAP", mon
            assert "average command processing time" in mon["Error"], mon
            other = st.monitor(GT60, "mbx2")
            assert other["AlertValue"] == "Healthy" and other["LastExecutionResult"] == "Succeeded", other
            loads = st.backends()
            assert loads["mbx1"]["average_processing_ms"] >= 200, loads
            assert loads["mbx2"]["average_processing_ms"] < 100, loads
            # Gt60 only escalates: the backend stays in rotation.
            assert not loads["mbx1"]["drained_by_responder"], loads
            assert not [a for a in st.json("/health")["ResponderActions"]
                        if a["Monitor"] == GT60 and a["Step"] in ("drain", "offline")]
            samples = parse_prometheus(st.metrics())
            assert metric_value(samples, "portico_monitor_state", monitor=GT60, target="mbx1") == 3
            assert metric_value(samples, "portico_monitor_state", monitor=GT60, target="mbx2") == 1
            assert metric_value(samples, "portico_backend_average_processing_seconds", backend="mbx1") >= 0.2

            # Recovery: fast answers push the moving average under 100 ms.
            relay.set_delay(0)
            slow.send("".join("f%d NOOP\r\n" % i for i in range(200)))
            slow.read_response("f199")
            st.wait_monitor(GT60, "mbx1", "Healthy", timeout=10)
        finally:
            slow.close()
            quick.close()
    finally:
        relay.stop()


# --------------------------------------------------------------------------
# 4. A stalled backend trips RequestsQueuedGt500Monitor.


def test_stalled_backend_trips_requests_queued(pair, portico_factory):
    """slow_relay.py stalls mbx1's answers; three sessions pipeline 200 NOOPs
    each in one write: 600 commands queued. The monitor keeps its default
    threshold (500, so "Gt500" means what it says) and samples every 300 ms
    (2 in a row). It turns Unhealthy for mbx1 only, without a drain;
    releasing the stall answers all 600 and it recovers."""
    mbx1, mbx2 = pair
    relay = SlowRelay(("127.0.0.1", mbx1.port)).start()
    sessions = []
    try:
        # No probe accounts: no CTP probe adds its commands to the queue.
        cfg = health_config(
            [backend_entry("mbx1", relay.address), backend_entry("mbx2", mbx2.address)],
            monitors={QUEUED: {"samples": 2, "healthy_after": 2, "interval": "300ms"}},
        )
        p = portico_factory(pair, config=cfg)
        st = Status(p)
        users = users_preferring("mbx1", ["mbx1", "mbx2"], 3)
        for u in users:
            c = logged_in(p, u)
            c.ok("SELECT INBOX")
            sessions.append(c)
        st.wait_monitor(QUEUED, "mbx1", "Healthy", timeout=5)

        relay.stall()
        for c in sessions:
            c.send("".join("q%d NOOP\r\n" % i for i in range(200)))
        b, _ = st.wait_backend("mbx1", lambda b: b["queued"] >= 600, "with 600 commands queued", 10)
        assert b["queued"] == 600, b
        mon, _ = st.wait_monitor(QUEUED, "mbx1", "Unhealthy", timeout=10)
        assert "commands queued" in mon["Error"], mon
        assert st.monitor(QUEUED, "mbx2")["AlertValue"] == "Healthy"
        samples = parse_prometheus(st.metrics())
        assert metric_value(samples, "portico_backend_commands_queued", backend="mbx1") == 600
        assert metric_value(samples, "portico_monitor_unhealthy", monitor=QUEUED, target="mbx1") == 1
        assert not st.backends()["mbx1"]["drained_by_responder"], "QueuedGt500 must only escalate"

        relay.release()
        for c in sessions:
            tagged, untagged = c.read_response("q199")
            assert tagged.split(b" ")[1] == b"OK", tagged
        st.wait_backend("mbx1", lambda b: b["queued"] == 0, "with an empty queue", 5)
        st.wait_monitor(QUEUED, "mbx1", "Healthy", timeout=5)
    finally:
        for c in sessions:
            c.close()
        relay.stop()


# --------------------------------------------------------------------------
# 5. Invoke-MonitoringProbe.


def test_invoked_probe_returns_fresh_result(pair, portico_factory, secrets):
    """POST /probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx1 runs the
    probe now and answers with its result; GET then lists it newest first."""
    pw = secrets("right", PASSWORD)
    p = portico_factory(pair, config=health_config([backend_entry(d.name, d.address, pw) for d in pair]))
    st = Status(p)
    path = "/probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx1"
    before = st.json(path)["Targets"][0]["Results"]
    newest_before = max((parse_time(r["ExecutionStartTime"]) for r in before), default=0.0)
    t_call = time.time()
    r = st.json(path, method="POST")
    started = parse_time(r["ExecutionStartTime"])
    assert started >= math.floor(t_call * 1000) / 1000.0, (r["ExecutionStartTime"], t_call)
    assert started > newest_before
    assert r["ResultType"] == "Succeeded" and r["FailureContext"] is None and r["Error"] == "", r
    assert r["ProbeName"] == "ImapDeepTestProbe" and r["TargetResource"] == "mbx1", r
    assert r["HealthSetName"] == "IMAP.Protocol"
    steps = " | ".join(r["Trace"])
    for word in ("greeting OK", "CAPABILITY OK", "LOGIN probe-mbx1 ***** OK", "SELECT INBOX OK", "LOGOUT"):
        assert word in steps, steps
    results = st.json(path)["Targets"][0]["Results"]
    # Newest first; a scheduled run may have finished meanwhile, so look
    # for it among the ones that ended since the call.
    recent = [x for x in results if parse_time(x["ExecutionStartTime"]) >= newest_before]
    assert r in recent, "GET does not list the result POST returned: %r" % recent
    ends = [parse_time(x["ExecutionEndTime"]) for x in results]
    assert ends == sorted(ends, reverse=True), "results are not newest first"

    # The routes' errors.
    assert st.request("POST", "/probes/IMAP.Protocol/ImapDeepTestProbe?target=nosuch")[0] == 404
    status, _, body = st.request("POST", "/probes/IMAP.Protocol/ImapDeepTestProbe")
    assert status == 400 and b"mbx1" in body and b"mbx2" in body, body
    assert st.request("GET", "/probes/IMAP.Protocol/NoSuchProbe")[0] == 404
    assert st.request("DELETE", path)[0] == 405


# --------------------------------------------------------------------------
# 6. Wrong probe credentials.


def test_wrong_probe_password_fails_at_login_and_never_leaks(pair, portico_factory, secrets):
    """mbx1's probe_password_file holds a wrong password: ImapDeepTestProbe
    (and the CTP probe through Portico) fail at step `login`; mbx2's, with
    the right password, succeed. Neither password string appears in any
    byte of /health, /health/report, /probes/..., /metrics, /backends, the
    protocol log or Portico's log and other files.

    The wrong password holds a space, a double quote and a backslash, so it
    goes on the wire as an escaped quoted string: a leak of the escaped form
    or of any part of it (its random middle) counts too."""
    nonce = uuid.uuid4().hex[:12]
    wrong = 'Wr0ng "pr\\obe" %s pw' % nonce
    right = PASSWORD
    cfg = health_config(
        [backend_entry("mbx1", pair[0].address, secrets("wrong", wrong)),
         backend_entry("mbx2", pair[1].address, secrets("right", right))],
        probes={"ImapDeepTestProbe": fast("300ms"), "ImapCTPProbe": fast("400ms")},
        protocol_log={"enabled": True},
    )
    p = portico_factory(pair, config=cfg)
    st = Status(p)
    for probe in ("ImapDeepTestProbe", "ImapCTPProbe"):
        results, _ = st.wait("a failed %s for mbx1" % probe, lambda: st.probe_results(probe, "mbx1"),
                             lambda rs: len(rs) >= 2, timeout=10)
        for r in results:
            assert r["ResultType"] == "Failed" and r["FailureContext"] == "login", r
            assert "NO" in r["Error"], r
            assert any("LOGIN probe-mbx1 *****" in t for t in r["Trace"]), r["Trace"]
        ok, _ = st.wait("a %s result for mbx2" % probe, lambda: st.probe_results(probe, "mbx2"),
                        lambda rs: len(rs) >= 1, timeout=10)
        assert ok[0]["ResultType"] == "Succeeded", ok[0]
    invoked = st.json("/probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx1", method="POST")
    assert invoked["FailureContext"] == "login"
    st.wait_monitor("ImapDeepTestMonitor", "mbx1", "Unhealthy", timeout=10)

    pages = {}
    for path in ["/health", "/health/report", "/backends", "/metrics", "/readyz", "/healthz"] + [
            "/probes/%s/%s" % (PROBE_SETS[n], n) for n in PROBES]:
        status, headers, body = st.request("GET", path)
        pages[path] = "".join("%s: %s\n" % kv for kv in headers.items()).encode() + body
    pages["POST deep mbx1"] = json.dumps(invoked).encode()
    p.stop()  # flushes the protocol log
    for f in sorted(Path(p.workdir).rglob("*")):
        if f.is_file():
            pages[str(f)] = f.read_bytes()
    assert any("LOG" in k for k in pages), "no protocol log file was written: %r" % list(pages)
    escaped = wrong.replace("\\", "\\\\").replace('"', '\\"')
    for name, secret in (("wrong", wrong), ("wrong, escaped", escaped), ("wrong, its middle", nonce),
                         ("right", right)):
        leaks = [where for where, data in pages.items() if secret.encode() in data]
        assert not leaks, "the %s probe password (%r) appears in %s" % (name, secret, leaks)


# --------------------------------------------------------------------------
# 7. ImapProxyTestProbe failing takes Portico out of rotation.


def test_proxy_test_failure_takes_portico_offline(pair, portico_factory):
    """The mechanism is honest and external: [limits] max_connections = 1 and
    one idle client holding that slot. Portico then refuses every new client
    with `* BYE [UNAVAILABLE] Too many connections`, its own proxy test
    included: the probe fails at `greeting`, ImapProxyTestMonitor turns
    Unhealthy, the CafeOffline responder takes Portico out of rotation and
    /readyz answers 503 (while /healthz stays 200). Closing the client frees
    the slot; after healthy_after passes /readyz is 200 again. (No probe
    accounts here, so no CTP probe competes for the single slot.)

    Then the other way to 503: both backends down and drained."""
    cfg = health_config(
        [backend_entry(d.name, d.address) for d in pair],
        probes={"ImapProxyTestProbe": fast("300ms"), "ImapSelfTestProbe": fast("300ms")},
        monitors={"ImapProxyTestMonitor": {"unhealthy_after": 2, "healthy_after": 2},
                  "ImapSelfTestMonitor": {"unhealthy_after": 2, "healthy_after": 2}},
        limits={"max_connections": 1},
    )
    p = portico_factory(pair, config=cfg)
    st = Status(p)
    st.wait_monitor("ImapProxyTestMonitor", "", "Healthy", timeout=10)
    assert st.request("GET", "/readyz")[0] == 200

    hog = ImapConn(p.port)
    try:
        assert hog.greeting.startswith(b"* OK"), hog.greeting
        mon, _ = st.wait_monitor("ImapProxyTestMonitor", "", "Unhealthy", timeout=10)
        last = st.probe_results("ImapProxyTestProbe", "")[0]
        assert last["ResultType"] == "Failed" and last["FailureContext"] == "greeting", last
        assert "Too many connections" in last["Error"], last
        status, _, body = st.wait("/readyz 503", lambda: st.request("GET", "/readyz"),
                                  lambda r: r[0] == 503, timeout=5)[0]
        assert b"ImapProxyTestMonitor" in body, body
        assert st.request("GET", "/healthz")[0] == 200
        assert st.json("/health")["Offline"] is True
        samples = parse_prometheus(st.metrics())
        assert metric_value(samples, "portico_offline") == 1
        assert metric_value(samples, "portico_monitor_state", monitor="ImapProxyTestMonitor", target="") == 3
    finally:
        hog.close()
    st.wait_monitor("ImapProxyTestMonitor", "", "Healthy", timeout=10)
    st.wait("/readyz 200", lambda: st.request("GET", "/readyz")[0], lambda s: s == 200, timeout=5)
    assert metric_value(parse_prometheus(st.metrics()), "portico_offline") == 0
    steps = [a["Step"] for a in st.json("/health")["ResponderActions"] if a["Monitor"] == "ImapProxyTestMonitor"]
    assert steps[-2:] == ["offline", "online"], steps

    # Every backend drained: not ready either.
    for d in pair:
        d.stop()
    status, _, body = st.wait("/readyz 503", lambda: st.request("GET", "/readyz"),
                              lambda r: r[0] == 503, timeout=10)[0]
    assert b"every backend is drained" in body, body
    for d in pair:
        d.start()
    st.wait("/readyz 200", lambda: st.request("GET", "/readyz")[0], lambda s: s == 200, timeout=10)


# --------------------------------------------------------------------------
# 8. The status endpoint under abuse (bounded).


def _read_http_response(sock: socket.socket, timeout: float) -> tuple:
    """Reads one response or until close. -> (status or None, data, how)
    with how in {'response', 'eof', 'reset', 'timeout'}."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            m = re.search(rb"\r\ncontent-length: *(\d+)", data[:head_end], re.I)
            if m and len(data) >= head_end + 4 + int(m.group(1)):
                return int(data.split(b" ", 2)[1]), data, "response"
        left = deadline - time.monotonic()
        if left <= 0:
            return None, data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None, data, "timeout"
        except ConnectionResetError:
            return _status_of(data), data, "reset"
        if not chunk:
            return _status_of(data), data, "eof"
        data += chunk


def _status_of(data: bytes):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(m.group(1)) if m else None


def _await_close(sock: socket.socket, timeout: float) -> tuple:
    """Reads until EOF/reset. -> (data, how)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def test_status_endpoint_survives_abuse(pair, portico_factory):
    """Garbage -> 400 JSON and close; a 1 MiB header -> 431 and close (a
    64 KiB URL -> 414);
    500 connections at once -> at most max_connections (256) served, the
    rest refused; half-sent and trickled requests closed by the request
    timeout (10 s); the IMAP workers are unaffected throughout and the
    endpoint answers again afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= 1200, "RLIMIT_NOFILE hard limit %d is too low for 500 connections" % hard
    p = portico_factory(pair, config=health_config([backend_entry(d.name, d.address) for d in pair]))
    st = Status(p)
    addr = ("127.0.0.1", p.status_port)
    imap = logged_in(p, "alice")
    flood: list = []
    trickle_stop = threading.Event()
    try:
        imap.ok("SELECT INBOX")

        # Half-sent and trickled requests, left to the request timeout
        # while the rest runs.
        t_half = time.monotonic()
        half = socket.create_connection(addr, timeout=5)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        trickle = socket.create_connection(addr, timeout=5)
        trickle_err: list = []

        def trickler():
            try:
                for b in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                    if trickle_stop.wait(0.5):
                        return
                    trickle.send(bytes([b]))
            except OSError as e:
                trickle_err.append(e)

        threading.Thread(target=trickler, daemon=True).start()

        # Garbage.
        for garbage in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64) + b"\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
                        b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
                        b"GET /health HTTP/7.1\r\n\r\n"):
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(garbage)
                data, how = _await_close(s, 5)
                assert how in ("eof", "reset"), "garbage %r: connection not closed (%s)" % (garbage[:20], how)
                if data:
                    status = _status_of(data)
                    assert status in (400, 505), "garbage %r -> %r" % (garbage[:20], data[:200])
                    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
                    assert body["error"]["status"] == status, body
            imap.ok("NOOP")

        # A 1 MiB header -> 431; a 64 KiB URL -> 414 (or a close).
        for big, want in ((b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
                          (b"GET /health?" + b"a" * (1 << 16) + b" HTTP/1.1\r\n\r\n", 414)):
            with socket.create_connection(addr, timeout=10) as s:
                try:
                    s.sendall(big)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                data, how = _await_close(s, 10)
                assert how in ("eof", "reset"), how
                if data:
                    assert _status_of(data) == want, data[:300]
                    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["status"] == want
            imap.ok("NOOP")

        # 500 connections at once, each asking GET /healthz and staying open.
        max_conns = 256
        sel = selectors.DefaultSelector()
        for i in range(500):
            s = socket.create_connection(addr, timeout=5)
            flood.append(s)
        for s in flood:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass  # refused and closed already
        outcome = {}
        for s in flood:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, b"")
        deadline = time.monotonic() + 15
        while len(outcome) < len(flood) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, BlockingIOError) as e:
                    chunk = None if isinstance(e, BlockingIOError) else b""
                if chunk is None:
                    continue
                data = key.data + chunk
                status = _status_of(data)
                done = not chunk or (status is not None and data.endswith(b"}"))
                if done:
                    outcome[s] = status if chunk or status else "closed"
                    sel.unregister(s)
                else:
                    sel.modify(s, selectors.EVENT_READ, data)
        sel.close()
        served = sum(1 for v in outcome.values() if v == 200)
        refused = len(outcome) - served
        assert len(outcome) == 500, "%d of 500 connections got no answer within 15 s" % (500 - len(outcome))
        assert set(outcome.values()) <= {200, 503, "closed"}, set(outcome.values())
        assert served <= max_conns, "%d connections served, limit %d" % (served, max_conns)
        assert served >= max_conns - 10, "only %d served: the limit is %d" % (served, max_conns)
        assert refused >= 500 - max_conns, refused
        # While they are open: the workers serve IMAP.
        imap.ok("NOOP")
        with logged_in(p, "bob") as c2:
            c2.ok("SELECT INBOX")
            c2.ok("NOOP")
        for s in flood:
            s.close()
        flood.clear()
        st.wait("/healthz 200 after the flood", lambda: st.request("GET", "/healthz", timeout=2)[0],
                lambda s: s == 200, timeout=5)

        # The half-sent and trickled requests end at the request timeout.
        for name, s in (("half-sent", half), ("trickled", trickle)):
            data, how = _await_close(s, max(0.0, t_half + 15 - time.monotonic()))
            took = time.monotonic() - t_half
            assert how in ("eof", "reset"), "%s request still open after %.1fs" % (name, took)
            assert 9.0 <= took <= 15, "%s request closed after %.1fs (request timeout 10 s)" % (name, took)
            if data:
                assert _status_of(data) == 408, data[:200]
            s.close()
        imap.ok("NOOP")
        assert st.request("GET", "/health")[0] == 200
        assert p.running()
    finally:
        trickle_stop.set()
        for s in flood:
            s.close()
        imap.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------
# 9. /metrics is valid Prometheus text with the commands we ran.


def test_metrics_are_valid_prometheus_text(pair, portico_factory):
    p = portico_factory(pair, config=health_config([backend_entry(d.name, d.address) for d in pair]))
    st = Status(p)
    user = "carol"
    backend = rendezvous_order(user, ["mbx1", "mbx2"])[0]
    with logged_in(p, user) as c:
        c.ok("SELECT INBOX")
        for _ in range(3):
            c.ok("NOOP")
        c.ok("UID FETCH 1:* (FLAGS)")
        c.ok("LOGOUT")
    status, headers, body = st.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    samples = parse_prometheus(body.decode("utf-8"))
    assert metric_value(samples, "portico_commands_total", backend=backend, command="NOOP") >= 3
    assert metric_value(samples, "portico_commands_total", backend=backend, command="SELECT") >= 1
    buckets = [(l, v) for n, l, v in samples
               if n == "portico_command_duration_seconds_bucket" and l.get("backend") == backend
               and l.get("command") == "NOOP"]
    assert buckets, "no portico_command_duration_seconds_bucket for NOOP on %s" % backend
    assert max(v for _, v in buckets) >= 3
    text = body.decode("utf-8")
    for family in ("portico_probe_result", "portico_probe_latency_seconds", "portico_monitor_state",
                   "portico_offline", "portico_backend_drained", "portico_backend_commands_queued",
                   "portico_connections_total", "portico_command_duration_seconds"):
        assert "\n# TYPE %s " % family in "\n" + text, "no TYPE line for %s" % family
    for family in ("portico_monitor_state", "portico_backend_drained", "portico_connections_total"):
        assert any(n == family for n, _, _ in samples), "no %s sample" % family


# --------------------------------------------------------------------------
# 10. Bearer token.


def test_bearer_token_guards_everything_but_healthz(pair, portico_factory):
    token = "tok-%s" % uuid.uuid4().hex
    cfg = health_config([backend_entry(d.name, d.address) for d in pair], status={"token": token})
    p = portico_factory(pair, config=cfg)
    anon = Status(p)
    auth = Status(p, token=token)
    for path in ("/health", "/health/report", "/backends", "/metrics", "/readyz",
                 "/probes/IMAP.Protocol/ImapSelfTestProbe"):
        status, headers, body = anon.request("GET", path)
        assert status == 401, (path, status, body)
        assert headers.get("www-authenticate", "").lower().startswith("bearer"), headers
        assert json.loads(body)["error"]["status"] == 401
        assert anon.request("GET", path, token="wrong-" + token)[0] == 401
        assert anon.request("GET", path, token=token[:-1])[0] == 401
        assert auth.request("GET", path)[0] == 200, path
    # An unauthorised POST must not run the probe. (Wait for the first
    # scheduled run, within 5 s of start; the next is a minute away.)
    auth.wait("the first ImapSelfTestProbe result", lambda: auth.probe_results("ImapSelfTestProbe", "mbx1"),
              lambda rs: len(rs) >= 1, timeout=10)
    before = len(auth.probe_results("ImapSelfTestProbe", "mbx1"))
    assert anon.request("POST", "/probes/IMAP.Protocol/ImapSelfTestProbe?target=mbx1")[0] == 401
    assert len(auth.probe_results("ImapSelfTestProbe", "mbx1")) == before
    assert anon.request("GET", "/healthz")[0] == 200
    assert auth.request("GET", "/healthz")[0] == 200
    assert token not in p.log_text()
