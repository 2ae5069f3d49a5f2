"""Fleet mode ([fleet], issue 11): several Portico nodes sharing operator
drains and user holds through a real redis-server, with real Dovecot
backends, all on loopback.

- A drain (and an enable) made on one node reaches every other node.
- A hold placed on one node refuses the user's logins on every node
  (NO [UNAVAILABLE]) and ends her open sessions between commands; a release,
  or the hold's TTL, lets her back in.
- Redis killed mid-test: open sessions go on; new logins go on with the
  last known state under on_redis_down = "local" and are refused under
  "refuse"; FleetStateMonitor turns Unhealthy on /health; after Redis
  restarts (empty) the nodes publish their state again, so a drain made
  before the restart is still in force, also for a node started afterwards.
- limits.max_sessions_per_user counts a user's sessions across the fleet
  (NO [LIMIT] on the node that would exceed it, accepted again after a
  logout); a SIGKILLed node's sessions stop counting and leave the registry
  within [fleet] session_ttl; with Redis killed each node counts its own.
- `sessions --fleet` lists every node's sessions (client address as the
  PROXY header reported it) and `kick --user U --fleet` ends U's sessions on
  every node, saying how many on which.
- Failed logins for one user on one node penalise that user on every node
  (NO [UNAVAILABLE]) for the window; Redis holds no password.

Every wait polls for its condition with a deadline.
"""
import json
import subprocess
import urllib.request

import pytest

from harness import ImapConn, free_port, portico_bin, wait_until
from lookup_harness import RedisServer


def fleet_cfg(redis_address, node, on_redis_down="local"):
    return {"workers": 1,
            "fleet": {"redis": redis_address, "node": node, "on_redis_down": on_redis_down}}


def start_nodes(portico_factory, backends, redis_address, names, on_redis_down="local"):
    return [portico_factory(backends, fleet_cfg(redis_address, n, on_redis_down)) for n in names]


def drained(p, backend):
    for b in p.admin("backend list")["backends"]:
        if b["name"] == backend:
            return b["drained_by_operator"]
    raise AssertionError("no backend %s on %s" % (backend, p))


def fleet_status(p):
    return p.admin("fleet")["fleet"]


def synced(p):
    return fleet_status(p)["connected"]


def fleet_monitor(p):
    with urllib.request.urlopen("http://127.0.0.1:%d/health" % p.status_port, timeout=10) as r:
        health = json.loads(r.read().decode())
    for m in health["Monitors"]:
        if m["Name"] == "FleetStateMonitor":
            return m
    return None


def login_status(p, user):
    with ImapConn(p.port) as c:
        tagged = c.login(user)
        return tagged


def fresh_redis(redis):
    assert redis.command("FLUSHALL") == "OK"
    return redis


def test_drain_and_enable_on_one_node_reach_every_node(portico_factory, backends, redis):
    fresh_redis(redis)
    a, b, c = start_nodes(portico_factory, backends, redis.address, ["node-a", "node-b", "node-c"])
    assert wait_until(lambda: all(synced(p) for p in (a, b, c)), 10)
    assert not any(drained(p, "mbx1") for p in (a, b, c))

    reply = a.admin("backend drain mbx1")
    assert reply["ok"] and reply["fleet"] == "published", reply
    assert wait_until(lambda: drained(b, "mbx1") and drained(c, "mbx1"), 5), \
        "the drain made on node-a did not reach node-b and node-c"
    assert redis.command("HGET", "portico:fleet:backends", "mbx1").startswith("drained ")
    # Routing on the other nodes follows: every login lands on mbx2.
    for user in ("user01", "user02", "user03", "user04", "user05"):
        with ImapConn(c.port) as conn:
            assert conn.login(user).startswith(b"a001 OK"), user
            sessions = c.admin("sessions --user %s" % user)["sessions"]
            assert [s["backend"] for s in sessions] == ["mbx2"], sessions

    # Enabled again from another node.
    reply = b.admin("backend enable mbx1")
    assert reply["ok"] and reply["fleet"] == "published", reply
    assert wait_until(lambda: not drained(a, "mbx1") and not drained(c, "mbx1"), 5)
    status = fleet_status(c)
    assert status["backends"]["mbx1"]["drained"] is False
    assert status["backends"]["mbx1"]["by"] == "node-b"


def test_hold_refuses_logins_everywhere_and_ends_open_sessions(portico_factory, backends, redis):
    fresh_redis(redis)
    a, b, c = start_nodes(portico_factory, backends, redis.address, ["node-a", "node-b", "node-c"])
    assert wait_until(lambda: all(synced(p) for p in (a, b, c)), 10)

    held = ImapConn(c.port)
    other = ImapConn(c.port)
    try:
        assert held.login("user07").startswith(b"a001 OK")
        assert other.login("user08").startswith(b"a001 OK")
        assert held.ok("SELECT INBOX")

        done = a.porticoctl("user", "hold", "USER07", "--ttl", "10m")
        assert done.returncode == 0, done.stderr
        # Node C ends user07's session between commands: a BYE, then close.
        held.sock.settimeout(5)
        line = held.readline()
        assert line.startswith(b"* BYE [UNAVAILABLE]"), line
        with pytest.raises(EOFError):
            held.readline()
        # Another user's session on the same node goes on.
        assert other.ok("NOOP") is not None
    finally:
        held.close()
        other.close()

    for p in (a, b, c):
        assert wait_until(lambda: login_status(p, "user07").startswith(b"a001 NO [UNAVAILABLE]"), 5), p
        assert login_status(p, "user09").startswith(b"a001 OK")
    assert redis.command("PTTL", "portico:fleet:hold:user07") is not None
    assert c.count_lines("user held") >= 1

    done = b.porticoctl("user", "release", "user07")
    assert done.returncode == 0, done.stderr
    for p in (a, b, c):
        assert wait_until(lambda: login_status(p, "user07").startswith(b"a001 OK"), 5), p
    assert redis.command("EXISTS", "portico:fleet:hold:user07") == "0"


def test_hold_expires_by_itself(portico_factory, backends, redis):
    fresh_redis(redis)
    a, b = start_nodes(portico_factory, backends, redis.address, ["node-a", "node-b"])
    assert wait_until(lambda: synced(a) and synced(b), 10)
    reply = a.admin("user hold user06 --ttl 3s")
    assert reply["ok"] and reply["fleet"] == "published", reply
    assert wait_until(lambda: login_status(b, "user06").startswith(b"a001 NO [UNAVAILABLE]"), 5)
    # Nobody releases it: the Redis key's TTL ends it on every node (each on its own clock).
    for node in (b, a):
        assert wait_until(lambda: login_status(node, "user06").startswith(b"a001 OK"), 10), node
    assert redis.command("EXISTS", "portico:fleet:hold:user06") == "0"
    assert fleet_status(b)["holds"] == []


def outage_nodes(portico_factory, backends, on_redis_down):
    server = RedisServer().start()
    nodes = start_nodes(portico_factory, backends, server.address, ["node-a", "node-b"],
                        on_redis_down)
    assert wait_until(lambda: all(synced(p) for p in nodes), 10)
    return server, nodes


def test_redis_outage_local_keeps_state_and_reconciles(portico_factory, backends):
    server, (a, b) = outage_nodes(portico_factory, backends, "local")
    port = server.port
    try:
        assert a.admin("backend drain mbx1")["fleet"] == "published"
        assert wait_until(lambda: drained(b, "mbx1"), 5)
        session = ImapConn(b.port)
        assert session.login("user02").startswith(b"a001 OK")
        assert session.ok("SELECT INBOX")

        server.stop()  # Redis killed mid-test
        assert wait_until(lambda: (fleet_monitor(b) or {}).get("AlertValue") == "Unhealthy", 10), \
            fleet_monitor(b)
        assert "redis 127.0.0.1:%d" % port == fleet_monitor(b)["TargetResource"]
        assert not fleet_status(b)["connected"]
        # The open session goes on; new logins go on with the last known state.
        assert session.ok("NOOP") is not None
        assert session.ok("STATUS INBOX (MESSAGES)")
        for user in ("user03", "user04"):
            with ImapConn(b.port) as conn:
                assert conn.login(user).startswith(b"a001 OK")
                assert [s["backend"] for s in b.admin("sessions --user %s" % user)["sessions"]] \
                    == ["mbx2"]
        assert drained(b, "mbx1") and drained(a, "mbx1")
        # A hold placed during the outage holds on its node at once ...
        reply = a.admin("user hold user06 --ttl 10m")
        assert reply["ok"] and reply["fleet"].startswith("this node only for now"), reply
        assert login_status(a, "user06").startswith(b"a001 NO [UNAVAILABLE]")
        assert login_status(b, "user06").startswith(b"a001 OK")

        server = RedisServer(port=port).start()  # back, and empty
        assert wait_until(lambda: synced(a) and synced(b), 10)
        assert wait_until(lambda: (redis_value(server, "HGET", "portico:fleet:backends", "mbx1")
                                   or "").startswith("drained "), 5)
        assert wait_until(lambda: (fleet_monitor(b) or {}).get("AlertValue") == "Healthy", 10)
        # ... and reaches the other nodes once Redis is back.
        assert wait_until(lambda: login_status(b, "user06").startswith(b"a001 NO [UNAVAILABLE]"), 5)
        # A node that starts now learns the drain made before the restart.
        (c,) = start_nodes(portico_factory, backends, server.address, ["node-c"])
        assert wait_until(lambda: drained(c, "mbx1"), 5)
        assert session.ok("NOOP") is not None
        session.close()
    finally:
        server.cleanup()


def redis_value(server, *args):
    try:
        return server.command(*args)
    except OSError:
        return None


def test_redis_outage_refuse_refuses_new_logins_only(portico_factory, backends):
    server, (a, b) = outage_nodes(portico_factory, backends, "refuse")
    port = server.port
    try:
        session = ImapConn(b.port)
        assert session.login("user05").startswith(b"a001 OK")
        server.stop()
        assert wait_until(lambda: login_status(b, "user01").startswith(
            b"a001 NO [UNAVAILABLE] Fleet state unavailable"), 10)
        assert session.ok("SELECT INBOX")  # open sessions go on
        assert fleet_status(b)["refusing_logins"] is True

        server = RedisServer(port=port).start()
        # Each node reconnects on its own backoff: wait for both, not one then the other.
        for node in (b, a):
            assert wait_until(lambda: login_status(node, "user01").startswith(b"a001 OK"), 10), node
        assert session.ok("NOOP") is not None
        session.close()
    finally:
        server.cleanup()


def test_check_config_validates_the_fleet_table(tmp_path):
    base = ('[[listen]]\naddress = "127.0.0.1:10143"\n[[backend]]\nname = "mbx1"\n'
            'address = "127.0.0.1:10144"\n')
    good = tmp_path / "good.toml"
    good.write_text(base + '[fleet]\nredis = "127.0.0.1:6379"\nnode = "a"\non_redis_down = "refuse"\n')
    run = subprocess.run([portico_bin(), "--check-config", str(good)], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    for bad, says in (('redis = "redis.example:6379"', "bad 'redis' address"),
                      ('on_redis_down = "wait"', "on_redis_down"),
                      ('node = "a b"', "bad 'node'")):
        path = tmp_path / "bad.toml"
        path.write_text(base + "[fleet]\n" + bad + "\n")
        run = subprocess.run([portico_bin(), "--check-config", str(path)], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode != 0 and says in run.stderr, (bad, run.stderr)


def limit_cfg(redis_address, node, limit, workers=1):
    cfg = fleet_cfg(redis_address, node)
    cfg["fleet"]["session_ttl"] = "2s"
    cfg["workers"] = workers
    cfg["limits"] = {"max_sessions_per_user": limit}
    return cfg


def logout(conn):
    conn.command("LOGOUT")
    conn.close()


def fleet_sessions(p, user=None):
    reply = p.admin("sessions --fleet" + (" --user %s" % user if user else ""))
    assert reply["ok"], reply
    return reply["sessions"]


def test_session_limit_counts_across_the_fleet_and_forgets_a_killed_node(
        portico_factory, backends, redis):
    fresh_redis(redis)
    a, b, c = [portico_factory(backends, limit_cfg(redis.address, n, 2))
               for n in ("node-a", "node-b", "node-c")]
    assert wait_until(lambda: all(synced(p) for p in (a, b, c)), 10)
    on_a, on_c, on_b = ImapConn(a.port), ImapConn(c.port), ImapConn(b.port)
    try:
        assert on_a.login("user10").startswith(b"a001 OK")
        assert on_c.login("user10").startswith(b"a001 OK")
        # user10 is at the limit (2): every node refuses a third session.
        for p in (b, a, c):
            assert wait_until(lambda: login_status(p, "user10").startswith(
                b"a001 NO [LIMIT] Too many sessions for this user"), 5), p
        assert login_status(b, "user11").startswith(b"a001 OK")  # per user
        assert on_a.ok("NOOP") is not None  # the open sessions go on

        logout(on_a)
        # Retried on one connection: a login refused for the limit leaves
        # the session in pre-login.
        assert wait_until(lambda: on_b.login("user10").split()[1] == b"OK", 5)
        for p in (a, c):
            assert wait_until(lambda: login_status(p, "user10").startswith(b"a001 NO [LIMIT]"), 5), p

        # Node C dies without a word: its session stops counting, and leaves
        # the registry, once its keys' TTL (2s) runs out.
        assert wait_until(lambda: {s["node"] for s in fleet_sessions(a, "user10")}
                          == {"node-b", "node-c"}, 5)
        c.kill()
        assert wait_until(lambda: login_status(a, "user10").startswith(b"a001 OK"), 8)
        assert wait_until(lambda: {s["node"] for s in fleet_sessions(a)} == {"node-b"}, 8)
        assert redis.command("EXISTS", "portico:fleet:counts:node-c") == "0"
        assert on_b.ok("NOOP") is not None
    finally:
        for conn in (on_a, on_b, on_c):
            conn.close()


def test_session_limit_with_redis_killed_counts_each_node_alone(portico_factory, backends):
    server = RedisServer().start()
    try:
        a, b = [portico_factory(backends, limit_cfg(server.address, n, 1, workers=2))
                for n in ("node-a", "node-b")]
        assert wait_until(lambda: synced(a) and synced(b), 10)
        first = ImapConn(a.port)
        try:
            assert first.login("user12").startswith(b"a001 OK")
            # Counted across node A's two workers, and on node B through Redis.
            for p in (a, b):
                assert wait_until(lambda: login_status(p, "user12").startswith(b"a001 NO [LIMIT]"),
                                  5), p
            server.stop()
            assert wait_until(lambda: not synced(a) and not synced(b), 10)
            # Local counts only: node B no longer knows of node A's session ...
            assert wait_until(lambda: login_status(b, "user12").startswith(b"a001 OK"), 5)
            # ... and node A still counts its own.
            assert login_status(a, "user12").startswith(b"a001 NO [LIMIT]")
            logout(first)
            assert wait_until(lambda: login_status(a, "user12").startswith(b"a001 OK"), 5)
        finally:
            first.close()
    finally:
        server.cleanup()


def test_sessions_and_kick_across_three_nodes(portico_factory, backends, redis):
    fresh_redis(redis)
    a, b = [portico_factory(backends, limit_cfg(redis.address, n, 0)) for n in ("node-a", "node-b")]
    # Node C sits behind a load balancer that sends PROXY v1 headers.
    c_port, lb_port = free_port(), free_port()
    c_cfg = limit_cfg(redis.address, "node-c", 0)
    c_cfg["listen"] = [{"address": "127.0.0.1:%d" % c_port},
                       {"address": "127.0.0.1:%d" % lb_port, "proxy_protocol": True,
                        "trusted_networks": ["127.0.0.0/8"]}]
    c = portico_factory(backends, c_cfg, listen_port=c_port)
    nodes = (a, b, c)
    assert wait_until(lambda: all(synced(p) for p in nodes), 10)

    kicked = [ImapConn(a.port), ImapConn(b.port)]
    stays = ImapConn(lb_port, read_greeting=False)
    try:
        for conn in kicked:
            assert conn.login("user13").startswith(b"a001 OK")
        stays.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 143\r\n")
        assert stays.readline().startswith(b"* OK")
        assert stays.login("user14").startswith(b"a001 OK")

        # Every node's view lists the three sessions, each on its node.
        def listed(p):
            return sorted((s["node"], s["user"]) for s in fleet_sessions(p))
        want = [("node-a", "user13"), ("node-b", "user13"), ("node-c", "user14")]
        for p in nodes:
            assert wait_until(lambda: listed(p) == want, 5), (p, listed(p))
        (entry,) = fleet_sessions(a, "user14")
        assert entry["client"] == "192.0.2.7:40001", entry
        assert entry["backend"] in ("mbx1", "mbx2") and len(entry["id"]) == 16, entry
        mine = {s["id"] for s in c.admin("sessions")["sessions"]}
        assert entry["id"] in mine

        done = c.porticoctl("--json", "kick", "--user", "USER13", "--fleet")
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["kicked"] == 2, reply
        assert reply["nodes"] == {"node-a": 1, "node-b": 1, "node-c": 0}, reply
        assert reply["nodes_answered"] == reply["nodes_asked"] == 3, reply
        for conn in kicked:
            conn.sock.settimeout(5)
            assert conn.readline().startswith(b"* BYE"), conn
        assert stays.ok("NOOP") is not None
        for p in nodes:
            assert wait_until(lambda: listed(p) == [("node-c", "user14")], 5), (p, listed(p))
        # Nobody left to kick: said so.
        none = a.admin("kick --user user13 --fleet")
        assert not none["ok"] and "no matching session on any of 3 nodes" in none["error"], none
        human = a.porticoctl("sessions", "--fleet")
        assert human.returncode == 0 and "node-c" in human.stdout and "192.0.2.7" in human.stdout, \
            human.stdout
    finally:
        for conn in kicked + [stays]:
            conn.close()


def test_login_failures_for_a_user_on_one_node_penalise_it_on_every_node(
        portico_factory, backends, redis):
    fresh_redis(redis)
    cfg = [fleet_cfg(redis.address, n) for n in ("node-a", "node-b")]
    for one in cfg:
        one["limits"] = {"login_failures_per_user": 3, "login_failure_window": "20s"}
    a, b = [portico_factory(backends, one) for one in cfg]
    assert wait_until(lambda: synced(a) and synced(b), 10)
    with ImapConn(a.port) as conn:
        for _ in range(3):
            assert conn.login("user16", "wrong-password").split()[1] == b"NO"
    for p in (b, a):
        assert wait_until(lambda: login_status(p, "user16").startswith(
            b"a001 NO [UNAVAILABLE] Too many failed logins"), 5), p
    assert login_status(b, "user17").startswith(b"a001 OK")  # per user (the IP is not limited)
    assert redis.command("ZCARD", "portico:fleet:fail:user:user16") == "3"
    # Redis holds the IP and the user name, never the password.
    everything = redis.command(
        "EVAL", "local out = {} for _, k in ipairs(redis.call('KEYS', 'portico:fleet:*')) do "
        "out[#out + 1] = k if redis.call('TYPE', k).ok == 'zset' then "
        "for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do out[#out + 1] = m end end end "
        "return table.concat(out, ' ')", "0")
    assert "fail:user:user16" in everything and "penalties" in everything, everything
    assert "wrong-password" not in everything, everything
