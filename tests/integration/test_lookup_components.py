"""The lookup stage's components against real services (issue 10), before
they are wired into the session:

- HttpAuthLookup (through tests/tools/lookup_probe) against a recording
  nginx-style auth service: routes, refusals, Auth-Wait, WAIT, timeouts,
  malformed answers, closed and refused connections, concurrent lookups,
  cancellation, the positive-answer cache and its expiry;
- RedisLookup against a real redis-server: value forms, shard indirection,
  Redis down, stalled and back;
- byte-compatibility with nginx: real nginx (mail module) and the probe send
  the same auth_http request for the same login, plain and over TLS.

Nothing sleeps to synchronise: tests wait for a recorded request, a closed
connection or a lookup's answer, each with a deadline.
"""

import imaplib
import json
import ssl
import time
import zlib

import pytest

from auth_service import AuthService
from harness import PASSWORD, free_port
from lookup_harness import LookupProbe, Nginx, RedisServer
from tls_certs import TestPki


@pytest.fixture
def auth(tmp_path):
    service = AuthService({}, record_path=str(tmp_path / "auth-requests.jsonl")).start()
    try:
        yield service
    finally:
        service.stop()


def http_probe(tmp_path, service, **more):
    table = {"kind": "http", "url": service.url, "timeout": "2s", "cache_ttl": "0s"}
    table.update(more)
    return LookupProbe(table, tmp_path)


def redis_probe(tmp_path, server, **more):
    table = {"kind": "redis", "address": server.address, "timeout": "1s", "cache_ttl": "0s"}
    table.update(more)
    return LookupProbe(table, tmp_path)


# --------------------------------------------------------------------------
# kind = "http"


def test_http_route_and_the_request_it_sent(auth, tmp_path):
    auth.script = {"alice": {"status": "OK", "server": "10.0.0.11", "port": 1143,
                             "user": "alice@mbx1", "pass": "backend-pw",
                             "headers": {"Auth-Starttls": "yes", "Auth-Proxy-Timeout": "20"}}}
    probe = http_probe(tmp_path, auth, headers={"X-Auth-Key": "secret"})
    r = probe.once("alice", "pa ss%w\tord", attempt=2, client_host="client.test",
                   tls_protocol="TLSv1.3", tls_cipher="TLS_AES_128_GCM_SHA256")
    assert r["outcome"] == "route"
    assert (r["host"], r["port"]) == ("10.0.0.11", 1143)
    assert r["backend_user"] == "alice@mbx1"
    assert r["backend_password_set"] is True
    assert (r["tls"], r["tls_verify"]) == ("starttls", True)
    assert r["proxy_timeout_ms"] == 20000
    assert "backend-pw" not in str(r), "the override's value never leaves the process"

    [req] = auth.records
    assert req["request_line"] == "GET /auth HTTP/1.0"
    assert req["headers"] == [
        ["Host", "127.0.0.1"],
        ["Auth-Method", "plain"],
        ["Auth-User", "alice"],
        ["Auth-Pass", "pa%20ss%25w%09ord"],
        ["Auth-Protocol", "imap"],
        ["Auth-Login-Attempt", "2"],
        ["Client-IP", "127.0.0.1"],
        ["Client-Host", "client.test"],
        ["Auth-SSL", "on"],
        ["Auth-SSL-Protocol", "TLSv1.3"],
        ["Auth-SSL-Cipher", "TLS_AES_128_GCM_SHA256"],
        ["X-Auth-Key", "secret"],
    ]
    assert req["password"] == "pa ss%w\tord"
    with open(auth.record_path) as f:
        assert [json.loads(line) for line in f] == [req], "the JSONL record holds the same"


def test_http_passthrough_sasl_is_method_none(auth, tmp_path):
    auth.script = {"*": {"status": "OK", "server": "10.0.0.12", "port": 143, "pass": None}}
    r = http_probe(tmp_path, auth).once("bob", "", method="none")
    assert r["outcome"] == "route" and r["backend_password_set"] is False
    headers = dict(auth.records[0]["headers"])
    assert headers["Auth-Method"] == "none"
    assert headers["Auth-Pass"] == ""


def test_http_refusals(auth, tmp_path):
    auth.script = {
        "bad": {"status": "Invalid login or password"},
        "slow": {"status": "Invalid login or password", "wait": 3},
        "moved": {"status": "OK", "headers": {"Auth-Nologin": "", "Auth-Reason": "Moved to mbx9"}},
    }
    probe = http_probe(tmp_path, auth)
    with probe:
        bad = probe.lookup("bad", "bad")
        slow = probe.lookup("slow", "slow")
        moved = probe.lookup("moved", "moved")
        assert probe.close()["loop_closed"] is True
    assert (bad["outcome"], bad["reason"], bad["wait"]) == ("refuse", "Invalid login or password",
                                                            None)
    assert (slow["outcome"], slow["wait"]) == ("refuse", 3)
    assert (moved["outcome"], moved["reason"], moved["nologin"]) == ("refuse", "Moved to mbx9",
                                                                     True)


def test_http_wait_status_pauses_then_asks_again(auth, tmp_path):
    auth.script = {"alice": {"status": "WAIT", "wait": 1, "rounds": 1,
                             "then": {"status": "OK", "server": "10.0.0.13", "port": 143}}}
    r = http_probe(tmp_path, auth).once("alice", "pw")
    assert r["outcome"] == "route" and r["route"] == "10.0.0.13:143"
    first, second = auth.requests_for("alice")
    assert second["time"] - first["time"] >= 0.95, "Auth-Wait: 1 is a one-second pause"
    assert first["raw"] == second["raw"], "the same request again"


def test_http_timeout_malformed_closed_and_incomplete(auth, tmp_path):
    auth.script = {
        "silent": {"mode": "never"},
        "garbage": {"mode": "raw", "data": "220 smtp.example.org ESMTP\r\n\r\n"},
        "closer": {"mode": "close"},
        "noserver": {"status": "OK", "port": 143},
        "hostname": {"status": "OK", "server": "mbx1.example.org", "port": 143},
    }
    probe = http_probe(tmp_path, auth, timeout="300ms")
    with probe:
        start = time.monotonic()
        probe.send({"op": "lookup", "tag": "silent", "user": "silent", "password": "s3cret-x"})
        results = {u: probe.lookup(u, u, password="s3cret-x")
                   for u in ("garbage", "closer", "noserver", "hostname")}
        results["silent"] = probe.wait_tag("silent")
        elapsed = time.monotonic() - start
        assert probe.close()["loop_closed"] is True
    port = auth.port
    assert all(r["outcome"] == "unavailable" for r in results.values()), results
    assert results["silent"]["error"] == (
        "auth http server 127.0.0.1:%d: no answer within 300ms (while waiting for the answer)"
        % port)
    # libuv arms timers from the loop's cached time, a few ms before the
    # probe's own clock starts: allow that much.
    assert 0.275 <= results["silent"]["elapsed_ms"] / 1000 < 2 and elapsed < 3
    assert "malformed HTTP answer" in results["garbage"]["error"]
    assert "connection closed without an answer" in results["closer"]["error"]
    assert results["noserver"]["error"].endswith("did not send server or port")
    assert "invalid server address" in results["hostname"]["error"]
    for r in results.values():
        assert "s3cret-x" not in r["error"], "no password in operator errors"
    assert auth.wait_for(lambda: auth.closed_by_client == 1, 5), "the timed-out connection is closed"


def test_http_connection_refused_is_immediate(tmp_path):
    probe = LookupProbe({"kind": "http", "url": "http://127.0.0.1:%d/auth" % free_port(),
                         "timeout": "5s"}, tmp_path)
    r = probe.once("alice", "pw")
    assert r["outcome"] == "unavailable"
    assert r["error"].endswith("cannot connect: connection refused")
    assert r["elapsed_ms"] < 1000


def test_http_lookups_run_concurrently(auth, tmp_path):
    # The service answers only once all ten requests are open together: a
    # client that ran them one after another would time out instead.
    auth.script = {"*": {"mode": "barrier", "count": 10,
                         "then": {"status": "OK", "server": "10.0.0.14", "port": 143}}}
    probe = http_probe(tmp_path, auth, timeout="5s")
    with probe:
        for i in range(10):
            probe.send({"op": "lookup", "tag": "t%d" % i, "user": "user%02d" % i, "password": "pw"})
        results = [probe.wait_tag("t%d" % i) for i in range(10)]
        assert probe.stats()["in_flight"] == 0
        assert probe.close()["loop_closed"] is True
    assert [r["outcome"] for r in results] == ["route"] * 10, results
    assert sorted(r["user"] for r in auth.records) == ["user%02d" % i for i in range(10)]


def test_http_cancel_closes_the_connection_and_answers_nothing(auth, tmp_path):
    auth.script = {"silent": {"mode": "never"},
                   "alice": {"status": "OK", "server": "10.0.0.15", "port": 143}}
    probe = http_probe(tmp_path, auth, timeout="10s")
    with probe:
        probe.send({"op": "lookup", "tag": "gone", "user": "silent", "password": "pw"})
        assert auth.wait_for_requests(1)
        probe.send({"op": "cancel", "tag": "gone"})
        assert probe.next_line() == {"op": "cancel", "tag": "gone", "cancelled": True}
        assert auth.wait_for(lambda: auth.closed_by_client == 1, 5)
        # The probe still works, and no line ever comes for "gone".
        assert probe.lookup("after", "alice")["outcome"] == "route"
        stats = probe.stats()
        assert stats["cancelled"] == 1 and stats["in_flight"] == 0
        assert probe.close()["loop_closed"] is True
    assert probe.lines.empty() and not probe._pending


def test_http_cache_hits_and_expiry(auth, tmp_path):
    auth.script = {
        "alice": {"status": "OK", "server": "10.0.0.16", "port": 143, "pass": None},
        "carol": {"status": "OK", "server": "10.0.0.17", "port": 143, "check_password": "right"},
    }
    probe = http_probe(tmp_path, auth, cache_ttl="700ms")
    with probe:
        asked = time.monotonic()  # no later than the probe stores the answer
        first = probe.lookup("a1", "alice")
        assert not first["from_cache"]
        second = probe.lookup("a2", "Alice", password="anything")
        assert second["from_cache"] and second["route"] == "10.0.0.16:143"
        assert len(auth.requests_for("alice")) == 1, "a hit does not ask the service"
        # Poll until the entry has expired: the service is asked again.
        n = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            n += 1
            r = probe.lookup("poll%d" % n, "alice")
            if not r["from_cache"]:
                break
            time.sleep(0.02)  # polling interval, not synchronisation
        assert not r["from_cache"], "the entry never expired"
        lived = time.monotonic() - asked
        assert 0.7 <= lived < 2.0, "the entry lived %.3fs for a cache_ttl of 0.7s" % lived
        assert len(auth.requests_for("alice")) == 2

        # An Auth-Pass answer serves only the password that produced it.
        assert probe.lookup("c1", "carol", password="right")["outcome"] == "route"
        wrong = probe.lookup("c2", "carol", password="wrong")
        assert wrong["outcome"] == "refuse" and not wrong["from_cache"]
        assert probe.lookup("c3", "carol", password="right")["from_cache"]
        assert len(auth.requests_for("carol")) == 2

        probe.send({"op": "flush", "user": "CAROL"})
        assert probe.next_line() == {"op": "flush", "flushed": 1}
        assert not probe.lookup("c4", "carol", password="right")["from_cache"]
        stats = probe.stats()
        assert stats["cache_hits"] == n - 1 + 2
        assert probe.close()["loop_closed"] is True


# --------------------------------------------------------------------------
# kind = "redis"


def test_redis_values(redis, tmp_path):
    redis.set("route:r-alice", "10.0.0.21:143")
    redis.set("route:r-bob", "mbx2")
    redis.set("route:r-carol", "[::1]:1143")
    redis.set("route:r-dave", "not a route!")
    redis.delete("route:r-erin")
    probe = redis_probe(tmp_path, redis)
    with probe:
        r = {u: probe.lookup(u, u) for u in ("r-alice", "R-Bob", "r-carol", "r-dave", "r-erin")}
        assert probe.close()["loop_closed"] is True
    assert r["r-alice"]["route"] == "10.0.0.21:143"
    assert (r["R-Bob"]["backend"], r["R-Bob"]["route"]) == ("mbx2", "mbx2"), "users are normalised"
    assert r["r-carol"]["route"] == "[::1]:1143"
    assert r["r-dave"]["outcome"] == "unavailable"
    assert r["r-dave"]["error"] == ("redis %s: key route:r-dave holds \"not a route!\", neither "
                                    "IP:PORT nor a backend name" % redis.address)
    assert r["r-erin"]["outcome"] == "no_entry"


def test_redis_shard_indirection(redis, tmp_path):
    shards = 64
    user = "shard-user@example.org"
    shard = zlib.crc32(user.encode()) % shards  # the documented hash
    redis.delete("route:" + user)
    redis.set("route:shard:%d" % shard, "mbx3")
    probe = redis_probe(tmp_path, redis, shards=shards)
    with probe:
        assert probe.lookup("s1", user.upper())["route"] == "mbx3"
        redis.set("route:" + user, "10.0.0.22:143")
        assert probe.lookup("s2", user)["route"] == "10.0.0.22:143", "the user key overrides"
        redis.delete("route:" + user)
        redis.delete("route:shard:%d" % shard)
        assert probe.lookup("s3", user)["outcome"] == "no_entry"
        assert probe.close()["loop_closed"] is True


def test_redis_down_stalled_and_back(tmp_path):
    server = RedisServer().start()
    try:
        server.set("route:alice", "mbx1")
        probe = redis_probe(tmp_path, server, timeout="400ms")
        with probe:
            assert probe.lookup("up", "alice")["route"] == "mbx1"

            # Stopped: refused at once, no waiting for the timeout.
            server.stop()
            down = [probe.lookup("down%d" % i, "alice") for i in range(3)]
            assert all(r["outcome"] == "unavailable" for r in down), down
            assert all(r["elapsed_ms"] < 300 for r in down), down

            # Back on the same port: the probe reconnects by itself.
            server.start()
            server.set("route:alice", "mbx1")
            n = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                n += 1
                r = probe.lookup("back%d" % n, "alice")
                if r["outcome"] == "route":
                    break
                time.sleep(0.02)  # polling interval
            assert r["outcome"] == "route", r

            # Stalled (SIGSTOP): the answer is unavailable after the timeout.
            server.pause()
            try:
                stalled = probe.lookup("stalled", "alice")
            finally:
                server.resume()
            assert stalled["outcome"] == "unavailable"
            assert stalled["error"].endswith("no answer within 400ms"), stalled
            assert 375 <= stalled["elapsed_ms"] < 1500  # see the http timeout test
            n = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                n += 1
                r = probe.lookup("resumed%d" % n, "alice")
                if r["outcome"] == "route":
                    break
                time.sleep(0.02)  # polling interval
            assert r["outcome"] == "route", r
            assert probe.close()["loop_closed"] is True
    finally:
        server.cleanup()


def test_redis_never_there(tmp_path):
    probe = LookupProbe({"kind": "redis", "address": "127.0.0.1:%d" % free_port(),
                         "timeout": "5s"}, tmp_path)
    r = probe.once("alice")
    assert r["outcome"] == "unavailable" and "Connection refused" in r["error"]
    assert r["elapsed_ms"] < 1000


# --------------------------------------------------------------------------
# nginx compatibility


def _compare_with_nginx(auth, nginx, tmp_path, logins, extra_headers, tls=None):
    """Each (user, password) logs in through nginx; then the probe looks up
    the same login; both requests must be the same bytes."""
    for user, password, ok in logins:
        client = (imaplib.IMAP4_SSL("127.0.0.1", nginx.port, ssl_context=tls, timeout=10)
                  if tls else imaplib.IMAP4("127.0.0.1", nginx.port, timeout=10))
        client._encoding = "utf-8"  # imaplib sends ASCII only unless told otherwise
        if tls:
            protocol, cipher = client.sock.version(), client.sock.cipher()[0]
        try:
            if ok:
                client.login(user, password)
                assert client.select("INBOX")[0] == "OK", "nginx routed the user to Dovecot"
                client.logout()
            else:
                with pytest.raises(imaplib.IMAP4.error):
                    client.login(user, password)
        finally:
            try:
                client.shutdown()
            except OSError:
                pass
    assert auth.wait_for_requests(len(logins))
    from_nginx = list(auth.records)
    probe = LookupProbe({"kind": "http", "url": auth.url, "headers": extra_headers,
                         "cache_ttl": "0s"}, tmp_path)
    for (user, password, _), sent in zip(logins, from_nginx):
        options = {}
        if tls:
            options = {"tls_protocol": protocol, "tls_cipher": cipher}
        attempt = dict(sent["headers"])["Auth-Login-Attempt"]
        probe.once(user, password, attempt=attempt, client_ip="127.0.0.1", **options)
        mine = auth.records[-1]
        assert mine["raw"] == sent["raw"], "nginx sent:\n%s\nPortico sent:\n%s" % (sent["raw"],
                                                                                   mine["raw"])


def test_nginx_and_portico_send_the_same_request(auth, dovecot_factory, tmp_path):
    backend = dovecot_factory("mbx1")
    auth.script = {"*": {"status": "OK", "server": "127.0.0.1", "port": backend.port,
                         "check_password": PASSWORD}}
    headers = {"X-Auth-Key": "secret", "X-Site": "portico-test"}
    nginx = Nginx(auth.url, headers).start()
    try:
        _compare_with_nginx(auth, nginx, tmp_path, [
            ("alice", PASSWORD, True),                 # routed by nginx to Dovecot
            ("bob", 'pa ss%w\tord"x', False),           # refused; escaped as nginx escapes
            ("carol@example.org", "p\u00e4ss", False),  # 8-bit password bytes pass raw
        ], headers)
    finally:
        nginx.cleanup()


def test_nginx_and_portico_send_the_same_request_over_tls(auth, dovecot_factory, tmp_path):
    backend = dovecot_factory("mbx1")
    auth.script = {"*": {"status": "OK", "server": "127.0.0.1", "port": backend.port,
                         "check_password": PASSWORD}}
    pki = TestPki.create()
    try:
        nginx = Nginx(auth.url, {"X-Auth-Key": "secret"},
                      tls=(str(pki.mail.cert), str(pki.mail.key))).start()
        try:
            context = ssl.create_default_context(cafile=str(pki.ca))
            _compare_with_nginx(auth, nginx, tmp_path, [("alice", PASSWORD, True)],
                                {"X-Auth-Key": "secret"}, tls=context)
            assert dict(auth.records[0]["headers"])["Auth-SSL"] == "on"
        finally:
            nginx.cleanup()
    finally:
        pki.cleanup()
