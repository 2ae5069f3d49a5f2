"""/metrics against Prometheus conventions, and the Grafana dashboard against /metrics.

One Portico in front of two real Dovecot backends, with real traffic (logins
that succeed and fail, commands, APPEND, IDLE, a protocol-log trace), so
that the labelled series exist. Then:

- the page is parsed with prometheus_client's own text parser (Debian's
  python3-prometheus-client), and its conventions checked: every family has
  HELP and TYPE, counters end in _total, durations are in seconds, the
  per-command processing time is a real histogram labelled by command and
  backend, and label sets are bounded (no user name anywhere, the command
  label only from Portico's list in proxy/src/accounting.h);
- every metric name that conf/grafana/portico.json's PromQL expressions
  query is exported with at least one series, and every label the
  dashboard groups or filters by exists on the metrics it queries.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import uuid

import pytest

from harness import PASSWORD, REPO_ROOT, Dovecot, ImapConn, Portico, make_message, wait_until

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - setup.sh installs it
    text_string_to_metric_families = None

DASHBOARD = REPO_ROOT / "conf" / "grafana" / "portico.json"
USERS = ["alice", "bob", "carol", "dave"]
FAST = {"interval": "300ms", "timeout": "2s", "retries": 0}


def known_commands() -> set:
    """The command names Portico counts by name (PORTICO_COMMANDS), read from the source."""
    text = (REPO_ROOT / "proxy" / "src" / "accounting.h").read_text()
    block = text[text.index("#define PORTICO_COMMANDS(X)"):]
    block = block[: block.index("// clang-format on")]
    names = set(re.findall(r"X\(([A-Z]+)\)", block))
    assert "OTHER" in names and "FETCH" in names, names
    return names


@pytest.fixture(scope="module")
def busy_portico(tmp_path_factory):
    """A Portico with two Dovecots behind it, after traffic of every kind
    the dashboard shows. Yields (portico, metrics text, token)."""
    root = tmp_path_factory.mktemp("metrics")
    backends = []
    portico = None
    try:
        for name in ("mbx1", "mbx2"):
            d = Dovecot(name, users=USERS + ["probe-" + name])
            backends.append(d)
            d.start()
        pw = root / "probe.pass"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)  # a secret file must be its owner's alone
        token = "metrics-%s" % uuid.uuid4().hex
        cfg = {
            "backend": [{"name": d.name, "address": d.address, "weight": 1, "forward_id": False,
                         "proxy_protocol": False, "probe_user": "probe-" + d.name,
                         "probe_password_file": str(pw)} for d in backends],
            "status": {"token": token},
            "health": {"probe": {p: FAST for p in ("ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe",
                                                    "ImapDeepTestProbe")}},
        }
        portico = Portico(backends, config=cfg).start()
        trace = portico.admin(["protocol-log", "on", "--user", "alice", "--ttl", "10m"])
        assert trace["ok"], trace
        for user in USERS:
            with ImapConn(portico.port) as c:
                assert c.login(user).split(b" ")[1] == b"OK", user
                c.ok("SELECT INBOX")
                assert c.append(make_message("metrics", marker="m-%s" % uuid.uuid4().hex[:8])).split(b" ")[1] == b"OK"
                c.ok("NOOP")
                c.ok("UID FETCH 1:* (FLAGS)")
                tagged = c.command("XYZZY")[0]  # unknown to Dovecot: BAD, counted as OTHER
                assert tagged.split(b" ")[1] == b"BAD", tagged
                tag = c.next_tag()
                c.send(tag + " IDLE\r\n")
                assert c.readline().startswith(b"+"), "no IDLE continuation"
                c.send("DONE\r\n")
                assert c.read_response(tag)[0].split(b" ")[1] == b"OK"
                c.ok("LOGOUT")
        with ImapConn(portico.port) as c:
            assert c.login(USERS[0], password="not-" + PASSWORD).split(b" ")[1] == b"NO"

        def metrics() -> str:
            conn = http.client.HTTPConnection("127.0.0.1", portico.status_port, timeout=10)
            try:
                conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200, (r.status, body[:300])
                return body.decode("utf-8")
            finally:
                conn.close()

        # Every probe has run once (their first runs are jittered over 5 s),
        # the traced user's lines reached the writer and the users' sessions
        # have ended on Portico's side too (a client reads LOGOUT's OK first).
        def settled() -> bool:
            text = metrics()
            probes = len(re.findall(r"^portico_probe_result\{", text, re.M))
            written = re.search(r"^portico_protocol_log_records_total (\d+)$", text, re.M)
            logouts = re.search(r'^portico_sessions_ended_total\{reason="logout"\} (\d+)$', text, re.M)
            return (probes >= 7 and written is not None and int(written.group(1)) > 0
                    and logouts is not None and int(logouts.group(1)) >= len(USERS))

        assert wait_until(settled, 20, 0.2), metrics()
        yield portico, metrics(), token
    finally:
        if portico is not None:
            portico.cleanup()
        for d in backends:
            d.cleanup()


def parse(text: str) -> list:
    if text_string_to_metric_families is None:
        pytest.fail("python3-prometheus-client is not installed (scripts/setup.sh installs it)")
    return list(text_string_to_metric_families(text))


def test_metrics_follow_prometheus_conventions(busy_portico):
    portico, text, _ = busy_portico
    families = parse(text)
    by_name = {f.name: f for f in families}
    assert len(by_name) == len(families), "two families share a name (a gauge X beside a counter X_total?)"
    typed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    helped = dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))
    assert typed == set(helped), "HELP and TYPE differ: %s" % (typed ^ set(helped))
    commands = known_commands()
    allowed_labels = {"backend", "command", "status", "le", "by", "outcome", "probe", "target", "monitor",
                      "health_set", "reason"}
    for f in families:
        assert f.name.startswith("portico_"), f.name
        assert f.type in ("counter", "gauge", "histogram"), (f.name, f.type)
        assert f.documentation.strip(), "no HELP for %s" % f.name
        # Base units: seconds, bytes; never milli/microseconds.
        assert not re.search(r"_(ms|us|milliseconds|microseconds|millis)(_|$)", f.name), f.name
        for s in f.samples:
            if f.type == "counter":
                # The parser strips _total from a counter family's name; the
                # exposed samples must carry it.
                assert s.name.endswith("_total"), "counter sample %s does not end in _total" % s.name
                assert f.name + "_total" in typed, "TYPE line of %s lacks _total" % f.name
            assert set(s.labels) <= allowed_labels, (s.name, s.labels)
            for value in s.labels.values():
                assert value.lower() not in USERS, "a user name in a label: %s %r" % (s.name, s.labels)
                assert PASSWORD not in value
            if "command" in s.labels:
                assert s.labels["command"] in commands | {"IDLE"}, s.labels
            assert not math.isnan(s.value), s
    assert PASSWORD not in text and "alice" not in text

    hist = by_name["portico_command_duration_seconds"]
    assert hist.type == "histogram"
    series: dict = {}
    for s in hist.samples:
        key = (s.labels["backend"], s.labels["command"])
        entry = series.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_sum"):
            entry["sum"] = s.value
        elif s.name.endswith("_count"):
            entry["count"] = s.value
    assert {c for _, c in series} >= {"SELECT", "APPEND", "NOOP", "FETCH", "LOGOUT", "OTHER"}, sorted(series)
    assert {b for b, _ in series} == {"mbx1", "mbx2"}, sorted(series)
    for key, e in series.items():
        les = [le for le, _ in e["buckets"]]
        counts = [v for _, v in e["buckets"]]
        assert les == sorted(les) and math.isinf(les[-1]), key
        assert counts == sorted(counts), "%r: buckets not cumulative" % (key,)
        assert counts[-1] == e["count"] > 0, key
        assert 0 < e["sum"] < 60 * e["count"], "%r: sum %r s is not in seconds" % (key, e["sum"])
    assert by_name["portico_idle_duration_seconds"].type == "histogram"

    def value(name, **labels):
        hits = [s.value for f in families for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(hits) == 1, (name, labels, hits)
        return hits[0]

    # The four users logged in (plus the CTP probe's own logins), one login was refused.
    assert value("portico_logins_total", outcome="success") >= len(USERS)
    assert value("portico_logins_total", outcome="rejected") >= 1
    assert value("portico_logins_total", outcome="unavailable") == 0
    assert value("portico_protocol_log_enabled") == 1
    assert value("portico_protocol_log_records_total") > 0
    assert value("portico_protocol_log_dropped_records_total") == 0
    # Every user's session ended by LOGOUT through the backend; end reasons
    # are a fixed set of names, each exported (0 or not) as one series.
    assert value("portico_sessions_ended_total", reason="logout") >= len(USERS)
    reasons = [s.labels["reason"] for s in by_name["portico_sessions_ended"].samples]
    assert len(reasons) == len(set(reasons)) and {"closed", "client_closed", "kicked"} <= set(reasons), reasons
    assert all(re.fullmatch(r"[a-z_]+", r) for r in reasons), reasons
    # XYZZY is no command Portico knows: counted as OTHER, once per user.
    other = [s.value for s in by_name["portico_commands"].samples if s.labels["command"] == "OTHER"]
    assert sum(other) == len(USERS), other


# --------------------------------------------------------------------------
# the Grafana dashboard

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
                   "or", "unless", "inf", "nan"}


def dashboard_queries() -> list:
    """Every PromQL expression in the dashboard: panel targets and template variable queries."""
    d = json.loads(DASHBOARD.read_text())
    exprs = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(d["panels"]):
        for t in p.get("targets", []):
            exprs.append(("panel %r" % p["title"], t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, q
            exprs.append(("variable %s" % v["name"], m.group(1)))
    return exprs


def metric_names(expr: str) -> tuple:
    """(metric names, {label names used in matchers and by/without}) of a PromQL expression."""
    # Grafana's variables are not PromQL.
    e = re.sub(r"\$__\w+|\$\{?\w+\}?", "1m", expr)
    labels = set()
    for inner in re.findall(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", inner))
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", e)
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels |= {x.strip() for x in clause.split(",") if x.strip()}
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        following = e[m.end():].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue  # a function or a keyword
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # the tail of a number such as 1e3
        names.add(word)
    # instance and job are the scrape's labels, not the exporter's.
    return names, labels - {"instance", "job"}


def test_metric_name_extraction():
    names, labels = metric_names(
        'histogram_quantile(0.99, sum by (le, command) (rate(a_bucket{backend=~"$backend",x!="y"}'
        '[$__rate_interval]))) / on(instance) group_left b_total + 1e3 * max without (z) (c)')
    assert names == {"a_bucket", "b_total", "c"}, names
    assert labels == {"le", "command", "backend", "x", "z"}, labels


def test_dashboard_is_well_formed():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    variables = {v["name"] for v in d["templating"]["list"]}
    assert variables == {"datasource", "instance", "backend"}, variables
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], "panel %r queries nothing" % p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["expr"].count("{") == t["expr"].count("}"), t["expr"]
            assert "[5m]" not in t["expr"], "use $__rate_interval: %s" % t["expr"]
    # What the issue asks the dashboard to show.
    text = json.dumps(d)
    for wanted in ("portico_backend_sessions_open", "portico_logins_total", "portico_commands_total",
                   "histogram_quantile(0.5,", "histogram_quantile(0.99,", "portico_command_duration_seconds_bucket",
                   "portico_backend_commands_queued", "portico_monitor_state", "portico_backend_drained",
                   "portico_connections_tls_total", "portico_protocol_log_dropped_records_total"):
        assert wanted in text, wanted


def test_dashboard_queries_only_exported_metrics(busy_portico):
    _, text, _ = busy_portico
    exported: dict = {}
    for f in parse(text):
        for s in f.samples:
            exported.setdefault(s.name, set()).update(s.labels)
    queried = dashboard_queries()
    assert len(queried) >= 20, queried
    missing = []
    for where, expr in queried:
        names, labels = metric_names(expr)
        assert names, "%s: no metric in %r" % (where, expr)
        absent = sorted(n for n in names if n not in exported)
        if absent:
            missing.extend("%s: %s (in %s)" % (where, n, expr) for n in absent)
            continue
        have = set().union(*(exported.get(n, set()) for n in names))
        unknown = labels - have
        assert not unknown, "%s: labels %s are on none of %s" % (where, sorted(unknown), sorted(names))
    assert not missing, "the dashboard queries metrics Portico does not export:\n" + "\n".join(missing)
