"""The status page (GET / on the status endpoint) in a real browser.

Real Dovecot backends and a real Portico; headless Chromium (Debian's
`chromium`) loads the page and runs its script under the page's own
Content-Security-Policy, and the test reads the DOM Chromium serialises
(--dump-dom). The states the page must show are made real first: a backend
drained by an operator through porticoctl, a backend whose Dovecot was
stopped until its ImapSelfTestMonitor turned Unhealthy and the responder
drained it, a protocol-log trace switched on through porticoctl, and
commands relayed so the processing-time charts have data. Every state is
awaited on the JSON routes before the browser looks.

A screenshot is written to build/test-artifacts/status-page.png (or
$PORTICO_TEST_ARTIFACTS) and its path printed; docs/status-page.png in the
README is a copy of one.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import REPO_ROOT, Dovecot, ImapConn, make_message, porticoctl_bin, wait_until

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(os.environ.get("PORTICO_TEST_ARTIFACTS", str(REPO_ROOT / "build" / "test-artifacts")))
QUIET = {"interval": "60s", "timeout": "5s", "retries": 0}
FAST = {"interval": "300ms", "timeout": "1s", "retries": 0}


# --------------------------------------------------------------------------
# headless Chromium


def chromium(url: str, *extra: str, budget_ms: int = 4000, timeout: float = 120.0) -> bytes:
    """Runs headless Chromium on url with a fresh profile; returns its stdout.

    --virtual-time-budget lets the page's timers and fetches run until the
    budget of virtual time is used up (network waits do not use it), then
    --dump-dom prints the DOM / --screenshot writes the picture. The whole
    process group is killed on timeout, so no renderer outlives the test."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="portico-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--disable-default-apps", "--no-proxy-server", "--hide-scrollbars",
               "--user-data-dir=" + profile, "--virtual-time-budget=%d" % budget_ms, *extra, url]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=dict(os.environ, HOME=profile))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError("chromium did not finish within %.0fs: %s" % (timeout, " ".join(cmd)))
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, GPU process) that linger
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, "chromium exited with %s\n%s" % (proc.returncode, err.decode(errors="replace")[-3000:])
    return out


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.walk()

    def find_all(self, tag: str | None = None, **attrs) -> list:
        return [n for n in self.walk() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, **attrs) -> "Node":
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, "expected one <%s %r>, found %d" % (tag, attrs, len(found))
        return found[0]


class DomParser(HTMLParser):
    """The DOM Chromium printed, as a tree of Nodes (attribute values and
    text unescaped, exactly as the page's script set them)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: (v or "") for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def dom(html: bytes) -> Node:
    p = DomParser()
    p.feed(html.decode("utf-8"))
    p.close()
    return p.root


def png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --------------------------------------------------------------------------
# the status endpoint, with the token


def get(portico, path: str, token: str | None) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", portico.status_port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": "Bearer " + token} if token else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(portico, path: str, token: str):
    status, _, body = get(portico, path, token)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def monitor(portico, token: str, name: str, target: str) -> dict:
    found = [m for m in get_json(portico, "/health", token)["Monitors"]
             if m["Name"] == name and m["TargetResource"] == target]
    assert len(found) == 1, (name, target, found)
    return found[0]


def backend(portico, token: str, name: str) -> dict:
    return {b["name"]: b for b in get_json(portico, "/backends", token)["backends"]}[name]


def ctl(portico, *args: str) -> dict:
    r = portico.porticoctl("--json", *args)
    assert r.returncode == 0, "porticoctl %s: rc=%d\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


# --------------------------------------------------------------------------


@pytest.fixture
def trio():
    made = []
    try:
        for name in ("mbx1", "mbx2", "mbx3"):
            d = Dovecot(name)
            made.append(d)
            d.start()
        yield made
    finally:
        for d in made:
            d.cleanup()


def relay_some_commands(portico, users) -> None:
    for user in users:
        with ImapConn(portico.port) as c:
            assert c.login(user).split(b" ")[1] == b"OK", user
            c.ok("SELECT INBOX")
            tagged = c.append(make_message("status page", marker="page-%s" % uuid.uuid4().hex[:8]))
            assert tagged.split(b" ")[1] == b"OK", tagged
            c.ok("NOOP")
            c.ok("UID FETCH 1:* (FLAGS)")
            c.ok("LIST \"\" \"*\"")
            c.ok("LOGOUT")
    with ImapConn(portico.port) as c:  # one refused login
        assert c.login(users[0], password="wrong").split(b" ")[1] == b"NO"


def test_status_page_shows_drained_backends_unhealthy_monitor_and_token_prompt(trio, portico_factory):
    if not os.access(porticoctl_bin(), os.X_OK):
        pytest.fail("porticoctl binary %s is missing" % porticoctl_bin())
    token = "page-%s" % uuid.uuid4().hex
    cfg = {
        "status": {"token": token},
        "health": {
            "probe": {"ImapProxyTestProbe": QUIET, "ImapCTPProbe": QUIET, "ImapDeepTestProbe": QUIET,
                      "ImapSelfTestProbe": FAST},
            "monitor": {"ImapSelfTestMonitor": {"unhealthy_after": 2, "healthy_after": 2},
                        "AverageCommandProcessingTimeGt60sMonitor": {"interval": "500ms"},
                        "RequestsQueuedGt500Monitor": {"interval": "500ms"}},
        },
    }
    p = portico_factory(trio, config=cfg)
    mbx1, mbx2, mbx3 = trio

    relay_some_commands(p, ["alice", "bob", "carol", "dave", "erin", "frank"])
    ctl(p, "backend", "drain", "mbx1")
    ctl(p, "protocol-log", "on", "--user", "alice", "--ttl", "15m")
    mbx2.stop()
    assert wait_until(lambda: monitor(p, token, "ImapSelfTestMonitor", "mbx2")["AlertValue"] == "Unhealthy", 20), \
        monitor(p, token, "ImapSelfTestMonitor", "mbx2")
    assert wait_until(lambda: backend(p, token, "mbx2")["drained_by_responder"], 10), backend(p, token, "mbx2")
    assert wait_until(lambda: monitor(p, token, "ImapSelfTestMonitor", "mbx3")["AlertValue"] == "Healthy", 10)
    # Two sessions open now, both on mbx3 (the only backend not drained).
    open_sessions = [ImapConn(p.port), ImapConn(p.port)]
    try:
        for c, user in zip(open_sessions, ("grace", "heidi")):
            assert c.login(user).split(b" ")[1] == b"OK"
            c.ok("SELECT INBOX")
        assert backend(p, token, "mbx3")["sessions"] == 2
        actions_status = get(p, "/health/actions", token)[0]
        assert actions_status in (200, 404), actions_status
        url = "http://127.0.0.1:%d/" % p.status_port

        # --- with the token (from the fragment): everything renders ----------
        # One run prints the DOM and writes the screenshot (a test artifact).
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        if shot.exists():
            shot.unlink()
        page = dom(chromium(url + "#token=" + token, "--dump-dom", "--screenshot=" + str(shot),
                            "--window-size=1280,1600", budget_ms=12000))
        assert shot.exists(), "chromium wrote no screenshot"
        assert png_size(shot) == (1280, 1600), png_size(shot)
        assert shot.stat().st_size > 50_000, "screenshot suspiciously small (%d bytes)" % shot.stat().st_size
        print("\nstatus page screenshot: %s" % shot)
        body = page.find("body")
        assert body.attrs["data-state"] == "ok", page.find("header").text()
        # The refresh timer (5 s) ran within the 12 s virtual-time budget.
        assert int(body.attrs["data-refreshes"]) >= 2, body.attrs

        rows = {r.attrs["data-backend"]: r for r in page.find_all("tr") if "data-backend" in r.attrs}
        assert sorted(rows) == ["mbx1", "mbx2", "mbx3"], sorted(rows)
        assert rows["mbx1"].attrs["data-drained"] == "true"
        assert rows["mbx1"].attrs["data-drained-by"] == "operator"
        assert rows["mbx1"].attrs["data-state"] == "drained-by-operator"
        assert "operator" in rows["mbx1"].find("td", **{"class": "drained-by"}).text()
        assert rows["mbx2"].attrs["data-drained"] == "true"
        assert rows["mbx2"].attrs["data-drained-by"] == "responder"
        assert rows["mbx3"].attrs["data-drained"] == "false"
        assert [td.text() for td in rows["mbx3"].find_all("td")][4] == "2", rows["mbx3"].text()  # sessions

        monitors = {(r.attrs["data-monitor"], r.attrs["data-target"]): r
                    for r in page.find_all("tr") if "data-monitor" in r.attrs}
        unhealthy = monitors[("ImapSelfTestMonitor", "mbx2")]
        assert unhealthy.attrs["data-alert"] == "Unhealthy"
        badge = unhealthy.find("span", **{"class": "badge Unhealthy"})
        assert badge.text() == "Unhealthy"
        assert monitors[("ImapSelfTestMonitor", "mbx3")].attrs["data-alert"] == "Healthy"
        assert monitors[("ImapSelfTestMonitor", "mbx1")].attrs["data-alert"] == "Healthy"
        # FirstAlertObservedTime of the Unhealthy monitor, as /health has it.
        first_alert = monitor(p, token, "ImapSelfTestMonitor", "mbx2")["FirstAlertObservedTime"]
        assert first_alert[:19].replace("T", " ") in unhealthy.text(), unhealthy.text()

        sets = {r.attrs["data-set"]: r.attrs["data-alert"] for r in page.find_all("tr") if "data-set" in r.attrs}
        assert sets["IMAP.Protocol"] == "Unhealthy", sets

        charts = {(f.attrs["data-chart-backend"], f.attrs["data-chart-command"]): f for f in page.find_all("figure")}
        commands = get_json(p, "/commands", token)
        expected = {(b["name"], c["command"]) for b in commands["backends"] for c in b["commands"]}
        assert ("mbx1", "SELECT") in expected or ("mbx2", "SELECT") in expected or ("mbx3", "SELECT") in expected
        assert set(charts) == expected, (sorted(charts), sorted(expected))
        for key, figure in charts.items():
            assert figure.find_all("rect"), "chart %r has no bars" % (key,)
        select = [f for (b, c), f in charts.items() if c == "SELECT"]
        assert sum(int(r.attrs["data-count"]) for f in select for r in f.find_all("rect")) >= 6

        plog = page.find("section", id="protocol-log")
        assert plog.attrs["data-enabled"] == "true"
        trace = plog.find("span", **{"class": "trace"}).text()
        assert "alice" in trace and "until" in trace, trace

        actions = page.find("section", id="actions")
        if actions_status == 404:
            assert actions.attrs["data-available"] == "false"
            assert "not available" in actions.text()
        else:
            assert actions.attrs["data-available"] == "true"
        assert "not ready" not in page.find("header").text()  # mbx3 still serves

        # --- without a token: the prompt, and no data ---------------------------
        page = dom(chromium(url, "--dump-dom"))
        assert page.find("body").attrs["data-state"] == "need-token"
        assert "hidden" not in page.find("form", id="token-form").attrs
        assert not [r for r in page.find_all("tr") if "data-monitor" in r.attrs or "data-backend" in r.attrs]

        # --- a wrong token: the prompt says so --------------------------------
        page = dom(chromium(url + "#token=wrong-" + token, "--dump-dom"))
        assert page.find("body").attrs["data-state"] == "need-token"
        assert "not accepted" in page.find("p", id="token-why").text()

        # --- text from outside is shown as text, never run as markup -----------
        evil = '<img src=x id=pwn onerror="document.body.dataset.pwned=1">'
        ctl(p, "protocol-log", "on", "--user", evil, "--ttl", "15m")
        page = dom(chromium(url + "#token=" + token, "--dump-dom"))
        assert page.find("body").attrs["data-state"] == "ok"
        assert "data-pwned" not in page.find("body").attrs
        assert not page.find_all("img"), "server text became an element"
        trace = page.find("section", id="protocol-log").find("span", **{"class": "trace"}).text()
        assert evil in trace, trace
    finally:
        for c in open_sessions:
            c.close()
    assert token not in p.log_text()


def test_status_page_headers_and_routes(backends, portico_factory):
    """GET / without a token: the page with its CSP; the data routes it
    reads still need the token; HEAD / has the headers and no body."""
    token = "page-%s" % uuid.uuid4().hex
    p = portico_factory(backends[:1], config={"status": {"token": token}})
    status, headers, body = get(p, "/", None)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["script-src"].startswith("'sha256-") and " " not in directives["script-src"]
    assert directives["style-src"].startswith("'sha256-") and " " not in directives["style-src"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert b"<title>Portico status</title>" in body
    for path in ("/health", "/backends", "/commands", "/protocol-log", "/health/report"):
        assert get(p, path, None)[0] == 401, path
        assert get(p, path, token)[0] == 200, path
    conn = http.client.HTTPConnection("127.0.0.1", p.status_port, timeout=10)
    try:
        conn.request("HEAD", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b""
        assert int(r.getheader("Content-Length")) == len(body)
    finally:
        conn.close()


def test_status_page_renders_overrides_and_action_history(backends, portico_factory):
    """Real routes only: an operator drain, a timed monitor override and a
    refused command whose line carries markup go through the admin socket;
    the page shows the override with its expiry and the action history
    newest first, and the markup stays text."""
    p = portico_factory(backends, config={"health": {"probe": {"ImapProxyTestProbe": QUIET, "ImapCTPProbe": QUIET,
                                                               "ImapDeepTestProbe": QUIET,
                                                               "ImapSelfTestProbe": QUIET}}})
    assert p.admin(["backend", "drain", "mbx1"])["ok"]
    r = p.admin(["monitor", "override", "ImapSelfTestMonitor", "--target", "mbx2", "--duration", "2h"])
    assert r["ok"], r
    evil = "<img src=x id=pwn onerror=\"document.body.dataset.pwned=1\">"
    assert not p.admin(["backend", "drain", evil])["ok"]  # no such backend: refused, and recorded
    status, _, body = get(p, "/health/actions", None)
    assert status == 200, body
    recorded = json.loads(body)["actions"]
    assert len(recorded) == 3, recorded
    status, _, body = get(p, "/health", None)
    override = [m["Override"] for m in json.loads(body)["Monitors"]
                if (m["Name"], m["TargetResource"]) == ("ImapSelfTestMonitor", "mbx2")][0]

    page = dom(chromium("http://127.0.0.1:%d/" % p.status_port, "--dump-dom"))
    body = page.find("body")
    assert body.attrs["data-state"] == "ok", page.find("header").text()
    assert "data-pwned" not in body.attrs and not page.find_all("img")

    section = page.find("section", id="actions")
    assert section.attrs["data-available"] == "true"
    rows = [r for r in section.find_all("tr") if "data-kind" in r.attrs]
    # Newest first, as the route gives them: the refused drain, the
    # override, the drain of mbx1.
    assert [(r.attrs["data-kind"], r.attrs["data-target"]) for r in rows] == \
        [(a["kind"], a["target"]) for a in recorded], (rows, recorded)
    assert rows[-1].attrs["data-target"] == "mbx1"
    cells = [td.text() for td in rows[0].find_all("td")]
    assert evil in " ".join(cells), cells
    assert cells[0].startswith(recorded[0]["time"][:10]), cells

    mbx1 = [r for r in page.find_all("tr") if r.attrs.get("data-backend") == "mbx1"][0]
    assert mbx1.attrs["data-drained-by"] == "operator"
    assert recorded[-1]["by"] in mbx1.find("td", **{"class": "drained-by"}).text()

    monitors = {(r.attrs["data-monitor"], r.attrs["data-target"]): r
                for r in page.find_all("tr") if "data-monitor" in r.attrs}
    overridden = monitors[("ImapSelfTestMonitor", "mbx2")]
    assert overridden.attrs["data-override"] == override["State"]
    cell = overridden.find("td", **{"class": "override"}).text()
    assert override["State"] in cell and override["Expires"][:16].replace("T", " ") in cell, (cell, override)
    assert "data-override" not in monitors[("ImapSelfTestMonitor", "mbx1")].attrs
