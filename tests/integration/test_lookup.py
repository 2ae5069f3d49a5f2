"""Directory lookups through Portico's sessions (issue 10), end to end:
real Dovecot backends, a recording nginx-style auth service, a real
redis-server and real nginx (mail module).

Every test waits for events (a recorded request, a log line, an answer)
with a deadline; none sleeps to synchronise.
"""

import json
import re
import time
import urllib.request

import pytest

from auth_service import AuthService
from harness import PASSWORD, ImapConn, plain_b64, which_backend, make_message
from lookup_harness import Nginx

SECRET_PW = "Dir-Pass-Xq7 %\tz"  # a password only the directory tests use (escaped by nginx)


@pytest.fixture(scope="module")
def auth():
    service = AuthService({}).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def fresh_auth(auth):
    auth.script = {}
    auth.records.clear()
    auth.closed_by_client = 0
    return auth


def http_config(service_url, **lookup):
    table = {"kind": "http", "url": service_url, "timeout": "2s", "cache_ttl": "0s",
             "headers": {"X-Auth-Key": "k3y"}}
    table.update(lookup)
    return {"lookup": table}


def route(backend, **more):
    host, port = backend.address.rsplit(":", 1)
    return dict({"status": "OK", "server": host, "port": int(port)}, **more)


def login_line(p, user, backend, since=0, timeout=10.0):
    return p.wait_for_line(re.compile(r"login user=%s backend=%s " % (re.escape(user), backend)),
                           since=since, timeout=timeout)


def http_get(p, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (p.status_port, path), timeout=10) as r:
        return r.read().decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s" % name)


# --------------------------------------------------------------------------
# kind = "http"


def test_http_routes_by_the_answer_and_sends_nginx_headers(backends, fresh_auth, portico_factory):
    mbx1, mbx2 = backends
    auth = fresh_auth
    auth.script = {"alice": route(mbx2), "bob": route(mbx1),
                   # Auth-User/Auth-Pass replace what the backend gets.
                   "carol": route(mbx2, user="dave", **{"pass": PASSWORD})}
    p = portico_factory(backends, http_config(auth.url))
    with ImapConn(p.port) as c:
        assert c.login("alice").split()[1] == b"OK"
    login_line(p, "alice", "mbx2")
    with ImapConn(p.port) as c:
        tagged, _ = c.command("AUTHENTICATE PLAIN " + plain_b64("bob"))
        assert tagged.split()[1] == b"OK"
    login_line(p, "bob", "mbx1")

    req = auth.requests_for("alice")[0]
    assert req["request_line"] == "GET /auth HTTP/1.0"
    assert req["headers"] == [
        ["Host", "127.0.0.1"], ["Auth-Method", "plain"], ["Auth-User", "alice"],
        ["Auth-Pass", PASSWORD], ["Auth-Protocol", "imap"], ["Auth-Login-Attempt", "1"],
        ["Client-IP", "127.0.0.1"], ["X-Auth-Key", "k3y"]]
    assert auth.requests_for("bob")[0]["password"] == PASSWORD, "AUTHENTICATE PLAIN's password"

    # carol's client password is wrong for Dovecot, but the directory sends
    # dave's credentials: Dovecot logs dave in.
    before = mbx2.log_text().count("user=<dave>")
    with ImapConn(p.port) as c:
        tagged, _ = c.command("AUTHENTICATE PLAIN " + plain_b64("carol", "client-only-pw"))
        assert tagged.split()[1] == b"OK", tagged
        marker = "carol-as-dave-%f" % time.time()
        assert c.append(make_message("x", marker=marker)).split()[1] == b"OK"
    login_line(p, "carol", "mbx2")
    assert mbx2.log_text().count("user=<dave>") > before
    assert which_backend(backends, "dave", marker) == ["mbx2"]


def test_http_refusal_closes_auth_wait_keeps_the_session(backends, fresh_auth, portico_factory):
    auth = fresh_auth
    auth.script = {"user10": {"status": "Invalid login or password"},
                   "user11": {"status": "Try later", "wait": 2},
                   "user12": {"status": "OK", "headers": {"Auth-Nologin": "y",
                                                       "Auth-Reason": "Mailbox moving"}}}
    p = portico_factory(backends, http_config(auth.url))
    with ImapConn(p.port) as c:
        tagged = c.login("user10")
        assert tagged.startswith(b"a001 NO [AUTHENTICATIONFAILED] Invalid login or password"), tagged
        data, how = c.read_until_closed(5)
        assert b"* BYE" in data and how == "eof", "no Auth-Wait: the session ends (nginx)"

    with ImapConn(p.port) as c:
        start = time.monotonic()
        assert c.login("user11").startswith(b"a001 NO [AUTHENTICATIONFAILED] Try later")
        # During the pause: a clear NO, the directory is not asked, the
        # session stays usable.
        retry = c.login("user11")
        assert re.match(rb"a002 NO \[UNAVAILABLE\] Login refused for now: retry in [12] seconds?",
                        retry), retry
        assert c.command("NOOP")[0].split()[1] == b"OK"
        assert len(auth.requests_for("user11")) == 1
        # After it, the directory is asked again (it refuses again).
        auth.script["user11"] = route(backends[0])
        deadline = time.monotonic() + 8
        while True:
            tagged = c.login("user11")
            if b"UNAVAILABLE" not in tagged or time.monotonic() > deadline:
                break
            auth.wait_for(lambda: False, timeout=0.2)  # bounded pause between polls
        assert tagged.split()[1] == b"OK", tagged
        assert time.monotonic() - start >= 1.9, "Auth-Wait: 2 holds logins for 2 s"
        assert len(auth.requests_for("user11")) == 2

    with ImapConn(p.port) as c:
        assert c.login("user12").startswith(b"a001 NO [AUTHENTICATIONFAILED] Mailbox moving")
        assert c.command("NOOP")[0].split()[1] == b"OK", "nologin keeps the session (Dovecot)"


def test_http_failures_answer_unavailable_and_trip_the_monitor(backends, fresh_auth,
                                                               portico_factory):
    auth = fresh_auth
    auth.script = {"silent": {"mode": "never"},
                   "garbage": {"mode": "raw", "data": "220 not http\r\n\r\n"},
                   "user13": {"status": "OK", "port": 143}}
    cfg = http_config(auth.url, timeout="300ms")
    cfg["health"] = {"monitor": {"DirectoryLookupMonitor": {"unhealthy_after": 3,
                                                             "healthy_after": 1}}}
    p = portico_factory(backends, cfg)
    for user in ("silent", "garbage", "user13"):
        with ImapConn(p.port) as c:
            start = time.monotonic()
            tagged, _ = c.command('LOGIN %s "%s"' % (user, SECRET_PW.replace("\t", " ")))
            assert tagged.startswith(b"a001 NO [UNAVAILABLE] Directory service unavailable"), tagged
            assert time.monotonic() - start < 3, "bounded by the lookup timeout, never a hang"
            assert c.command("NOOP")[0].split()[1] == b"OK"
    # Three failures in well under a second: one log line, the others held.
    p.wait_for_line("directory lookup failed")
    assert p.count_lines("directory lookup failed") < 3

    def monitor():
        health = json.loads(http_get(p, "/health"))
        for m in health["Monitors"]:
            if m["Name"] == "DirectoryLookupMonitor":
                return m
        return None

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (monitor() or {}).get("AlertValue") != "Unhealthy":
        auth.wait_for(lambda: False, timeout=0.1)
    m = monitor()
    assert m is not None and m["AlertValue"] == "Unhealthy", m
    assert m["TargetResource"] == "http 127.0.0.1:%d" % auth.port
    assert "did not send server or port" in m["Error"] or "auth http" in m["Error"], m

    # A working answer brings it back (healthy_after = 1).
    auth.script["user13"] = route(backends[0])
    with ImapConn(p.port) as c:
        assert c.login("user13").split()[1] == b"OK"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and monitor()["AlertValue"] != "Healthy":
        auth.wait_for(lambda: False, timeout=0.1)
    assert monitor()["AlertValue"] == "Healthy"

    # The password the directory saw never appears anywhere.
    secrets = (SECRET_PW.replace("\t", " "), PASSWORD)
    texts = [p.log_text(), http_get(p, "/metrics"), http_get(p, "/health"),
             p.porticoctl("health").stdout, p.porticoctl("stats").stdout]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_refused_connection_answers_unavailable(backends, portico_factory):
    from harness import free_port
    p = portico_factory(backends, http_config("http://127.0.0.1:%d/auth" % free_port()))
    with ImapConn(p.port) as c:
        assert c.login("alice").startswith(b"a001 NO [UNAVAILABLE]")
    p.wait_for_line(re.compile(r"directory lookup failed: .*cannot connect"))


def test_client_gone_while_its_lookup_is_in_flight(backends, fresh_auth, portico_factory):
    auth = fresh_auth
    auth.script = {"silent": {"mode": "never"}, "alice": route(backends[0])}
    p = portico_factory(backends, http_config(auth.url, timeout="20s"))
    c = ImapConn(p.port)
    c.send('a1 LOGIN silent "pw"\r\n')
    assert auth.wait_for(lambda: len(auth.requests_for("silent")) == 1)
    c.abort()
    # The session ends, and its lookup with it: the HTTP connection closes.
    assert auth.wait_for(lambda: auth.closed_by_client == 1, timeout=10)
    with ImapConn(p.port) as c2:
        assert c2.login("alice").split()[1] == b"OK"
    assert p.running()


def test_logins_in_flight_together_on_one_worker(backends, fresh_auth, portico_factory):
    auth = fresh_auth
    # The service answers only once three requests are open at once.
    auth.script = {"*": {"mode": "barrier", "count": 3, "then": route(backends[1])}}
    cfg = http_config(auth.url, timeout="5s")
    cfg["workers"] = 1
    p = portico_factory(backends, cfg)
    conns = [ImapConn(p.port) for _ in range(3)]
    try:
        for i, c in enumerate(conns):
            c.send('a1 LOGIN user%02d "%s"\r\n' % (i, PASSWORD))
        for c in conns:
            tagged, _ = c.read_response("a1")
            assert tagged.split()[1] == b"OK", tagged
    finally:
        for c in conns:
            c.close()


def test_cache_hit_expiry_and_flush(backends, fresh_auth, portico_factory):
    auth = fresh_auth
    auth.script = {"*": route(backends[1])}
    p = portico_factory(backends, dict(http_config(auth.url, cache_ttl="1s"), workers=1))

    def login(user="alice"):
        with ImapConn(p.port) as c:
            assert c.login(user).split()[1] == b"OK"

    login()
    login()
    assert len(auth.requests_for("alice")) == 1, "the second login is a cache hit"
    metrics = http_get(p, "/metrics")
    assert metric(metrics, "portico_lookup_cache_hits_total") == 1
    assert metric(metrics, 'portico_lookup_answers_total{outcome="route"}') == 2
    assert metric(metrics, "portico_lookup_duration_seconds_count") == 1
    assert 'portico_lookup_duration_seconds_bucket{le="+Inf"} 1' in metrics

    # Expiry: within a deadline the directory is asked again.
    start = time.monotonic()
    deadline = start + 6
    while len(auth.requests_for("alice")) < 2 and time.monotonic() < deadline:
        login()
    assert len(auth.requests_for("alice")) == 2
    assert time.monotonic() - start >= 0.5

    # Flush, one user and all: the next login asks again.
    p.config = dict(http_config(auth.url, cache_ttl="60s"), workers=1)
    p.reload()
    login("bob")
    login("bob")
    assert len(auth.requests_for("bob")) == 1
    out = p.porticoctl("lookup", "flush", "--user", "BOB")
    assert out.returncode == 0 and "flushed 1 cached directory answer" in out.stdout, out
    login("bob")
    assert len(auth.requests_for("bob")) == 2
    out = p.porticoctl("lookup", "flush")
    assert out.returncode == 0 and "flushed 1 " in out.stdout, out
    login("bob")
    assert len(auth.requests_for("bob")) == 3
    assert PASSWORD not in out.stdout + out.stderr


def test_probe_user_pin_wins_over_the_directory(backends, fresh_auth, portico_factory, tmp_path):
    mbx1, mbx2 = backends
    auth = fresh_auth
    auth.script = {"*": route(mbx1)}
    secret = tmp_path / "probe.pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    cfg = http_config(auth.url)
    p = portico_factory(backends, cfg, start=False)
    cfg["backend"] = [dict(b) for b in p.default_config()["backend"]]
    cfg["backend"][1].update(probe_user="user90", probe_password_file=str(secret))
    p.config = cfg
    p.start()
    with ImapConn(p.port) as c:
        assert c.login("user90").split()[1] == b"OK"
    login_line(p, "user90", "mbx2")
    assert auth.requests_for("user90") == [], "a probe user never asks the directory"
    # Everyone else does ask, and goes where it says.
    with ImapConn(p.port) as c:
        assert c.login("user91").split()[1] == b"OK"
    login_line(p, "user91", "mbx1")
    assert len(auth.requests_for("user91")) == 1


# --------------------------------------------------------------------------
# kind = "redis"


def test_redis_routes_shards_fallback_and_outage(backends, redis, portico_factory):
    mbx1, mbx2 = backends
    redis.set("route:alice", mbx2.address)
    redis.set("route:bob", "mbx1")  # a backend name
    shard = zlib_shard("carol", 16)
    redis.set("route:shard:%d" % shard, "mbx2")
    redis.delete("route:carol")
    redis.delete("route:erin")
    cfg = {"lookup": {"kind": "redis", "address": redis.address, "timeout": "500ms",
                      "cache_ttl": "0s", "shards": 16}}
    p = portico_factory(backends, cfg)
    for user, backend in (("alice", "mbx2"), ("bob", "mbx1"), ("carol", "mbx2")):
        with ImapConn(p.port) as c:
            assert c.login(user).split()[1] == b"OK"
        login_line(p, user, backend)
    # Moving the shard is one write; a per-user key overrides it.
    redis.set("route:shard:%d" % shard, "mbx1")
    with ImapConn(p.port) as c:
        assert c.login("carol").split()[1] == b"OK"
    assert len(p.wait_for_line(re.compile(r"login user=carol backend=mbx1 "))) == 1
    # No entry at all: fallback = "hash" (the default) routes by hashing.
    erin_shard = zlib_shard("erin", 16)
    redis.delete("route:shard:%d" % erin_shard)
    with ImapConn(p.port) as c:
        assert c.login("erin").split()[1] == b"OK"
    # Redis stopped: NO [UNAVAILABLE], quickly.
    redis.stop()
    try:
        with ImapConn(p.port) as c:
            start = time.monotonic()
            assert c.login("alice").startswith(b"a001 NO [UNAVAILABLE]")
            assert time.monotonic() - start < 3
    finally:
        redis.start()
    metrics = http_get(p, "/metrics")
    assert metric(metrics, 'portico_lookup_answers_total{outcome="no_entry"}') >= 1
    assert metric(metrics, 'portico_lookup_answers_total{outcome="unavailable"}') >= 1


def test_redis_fallback_refuse(backends, redis, portico_factory):
    redis.delete("route:frank")
    p = portico_factory(backends, {"lookup": {"kind": "redis", "address": redis.address,
                                              "fallback": "refuse", "cache_ttl": "0s"}})
    with ImapConn(p.port) as c:
        assert c.login("frank").startswith(b"a001 NO [AUTHENTICATIONFAILED]")
        assert c.command("NOOP")[0].split()[1] == b"OK"


def zlib_shard(user, shards):
    import zlib
    return zlib.crc32(user.encode()) % shards


# --------------------------------------------------------------------------
# Compatibility with nginx's mail module


CONNECTION_SPECIFIC = set()  # same client IP and attempt number on loopback: nothing excepted


def test_nginx_and_portico_send_the_same_request_and_route_alike(backends, fresh_auth,
                                                                 portico_factory):
    mbx1, mbx2 = backends
    auth = fresh_auth
    auth.script = {"grace": route(mbx2), "heidi": route(mbx1)}
    nginx = Nginx(auth.url, extra_headers={"X-Auth-Key": "k3y"}).start()
    try:
        p = portico_factory(backends, http_config(auth.url))
        routes = {}
        for name, port in (("nginx", nginx.port), ("portico", p.port)):
            for user in ("grace", "heidi"):
                with ImapConn(port) as c:
                    assert c.login(user).split()[1] == b"OK", (name, user)
                    marker = "%s-%s-%f" % (name, user, time.time())
                    assert c.append(make_message("compat", marker=marker)).split()[1] == b"OK"
                    routes[(name, user)] = which_backend(backends, user, marker)
        for user in ("grace", "heidi"):
            via_nginx, via_portico = auth.requests_for(user)
            strip = lambda r: [h for h in r["headers"] if h[0] not in CONNECTION_SPECIFIC]
            assert via_nginx["request_line"] == via_portico["request_line"]
            assert strip(via_nginx) == strip(via_portico), (via_nginx["raw"], via_portico["raw"])
            assert routes[("nginx", user)] == routes[("portico", user)]
        assert routes[("portico", "grace")] == ["mbx2"]
        assert routes[("portico", "heidi")] == ["mbx1"]
    finally:
        nginx.cleanup()


def test_nginx_and_portico_agree_over_tls(backends, fresh_auth, portico_factory, tmp_path):
    """Implicit TLS on both listeners: Auth-SSL, Auth-SSL-Protocol and
    Auth-SSL-Cipher come from the client leg as nginx sends them."""
    import ssl
    from tls_certs import TestPki
    mbx1, _ = backends
    auth = fresh_auth
    auth.script = {"*": route(mbx1)}
    pki = TestPki.create(tmp_path / "pki")
    leaf = pki.mail
    nginx = Nginx(auth.url, extra_headers={"X-Auth-Key": "k3y"},
                  tls=(str(leaf.cert), str(leaf.key))).start()
    try:
        p = portico_factory(backends, start=False)
        cfg = http_config(auth.url)
        cfg["listen"] = [{"address": "127.0.0.1:%d" % p.port, "tls": "implicit",
                          "cert": str(leaf.cert), "key": str(leaf.key)}]
        p.config = cfg
        p.start()
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.check_hostname = False
        # nginx 1.22's mail module offers TLS 1.2 at most here; one cipher
        # on both sides, so the connection facts are the same.
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        for port in (nginx.port, p.port):
            with socket_tls(port, context) as s:
                f = s.makefile("rb")
                assert f.readline().startswith(b"* OK")
                s.sendall(b'a LOGIN user30 "%s"\r\n' % PASSWORD.encode())
                line = f.readline()
                while not line.startswith(b"a "):
                    line = f.readline()
                assert line.startswith(b"a OK"), (port, line)
        via_nginx, via_portico = auth.requests_for("user30")
        headers = dict(via_portico["headers"])
        assert headers["Auth-SSL"] == "on"
        assert headers["Auth-SSL-Protocol"] == "TLSv1.2"
        assert headers["Auth-SSL-Cipher"] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert via_nginx["headers"] == via_portico["headers"], (via_nginx["raw"], via_portico["raw"])
    finally:
        nginx.cleanup()
        pki.cleanup()


def socket_tls(port, context):
    import socket
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="mail.test")
