"""Fleet mode's health verdicts by quorum (issue 11), with a real
redis-server and real Dovecot backends on loopback.

Three nodes share the backend names mbx1 and mbx2. Node-a and node-b are
given an mbx1 address where nothing listens, so their own self-test probes
fail and their responders drain mbx1 there; node-c reaches the real mbx1 and
finds it healthy. Two of three is the default quorum (a majority of the
live nodes), so node-c drains mbx1 too ("drained-by-fleet"), and its logins
go to mbx2. Then node-a is killed: its vote expires with its alive key, one
of two is no majority, and node-c takes mbx1 back.

Every wait polls for its condition with a deadline.
"""

import json
import urllib.request

from harness import ImapConn, free_port, wait_until
from test_fleet import fleet_status, fresh_redis, synced

PROBES = ("ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe")


def node_config(redis_address, name, mbx1_address, mbx2_address):
    quiet = {"interval": "60s", "timeout": "5s", "retries": 0}
    probes = {p: dict(quiet) for p in PROBES}
    probes["ImapSelfTestProbe"] = {"interval": "200ms", "timeout": "1s", "retries": 0}
    return {
        "workers": 1,
        "backend": [{"name": "mbx1", "address": mbx1_address, "weight": 1},
                    {"name": "mbx2", "address": mbx2_address, "weight": 1}],
        "health": {"responders": "act", "probe": probes,
                   "monitor": {"ImapSelfTestMonitor": {"unhealthy_after": 2, "healthy_after": 1}}},
        "fleet": {"redis": redis_address, "node": name},
    }


def backend_state(p, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/backends" % p.status_port, timeout=10) as r:
        backends = json.loads(r.read().decode())["backends"]
    return next(b for b in backends if b["name"] == name)


def test_a_backend_unhealthy_on_a_quorum_is_drained_on_every_node(portico_factory, backends,
                                                                   redis):
    fresh_redis(redis)
    mbx1, mbx2 = backends
    nowhere = "127.0.0.1:%d" % free_port()  # nothing listens: probes fail
    a, b = (portico_factory(backends, config=node_config(redis.address, n, nowhere, mbx2.address))
            for n in ("node-a", "node-b"))
    c = portico_factory(backends, config=node_config(redis.address, "node-c", mbx1.address,
                                                     mbx2.address))
    nodes = (a, b, c)
    assert wait_until(lambda: all(synced(p) for p in nodes), 10)

    # Node-a's and node-b's responders drain mbx1 on their own ...
    for p in (a, b):
        assert wait_until(lambda: backend_state(p, "mbx1")["drained_by_responder"], 15), p
    # ... and with two of three live nodes voting, node-c drains it too,
    # though its own probes pass.
    assert wait_until(lambda: backend_state(c, "mbx1")["drained_by_fleet"], 5), \
        fleet_status(c)
    state = backend_state(c, "mbx1")
    assert state["state"] == "drained-by-fleet" and not state["drained_by_responder"], state
    status = fleet_status(c)
    assert status["live_nodes"] == 3 and status["health_quorum"] == 2, status
    assert status["health"]["mbx1"] == {"unhealthy_on": 2, "drained": True}, status
    assert not backend_state(c, "mbx2")["drained_by_fleet"]
    assert c.count_lines("backend mbx1 drained fleet-wide: Unhealthy on 2 of 3 live nodes") == 1
    for user in ("user01", "user02", "user03", "user04"):  # new logins skip mbx1
        with ImapConn(c.port) as conn:
            assert conn.login(user).startswith(b"a001 OK"), user
            assert [s["backend"] for s in c.admin("sessions --user %s" % user)["sessions"]] \
                == ["mbx2"]

    # Node-a dies: its vote goes with its alive key (3 s), one of two live
    # nodes is no majority, and node-c takes mbx1 back.
    a.kill()
    assert wait_until(lambda: not backend_state(c, "mbx1")["drained_by_fleet"], 10), \
        fleet_status(c)
    status = fleet_status(c)
    assert status["live_nodes"] == 2 and status["health"]["mbx1"]["unhealthy_on"] == 1, status
    assert backend_state(c, "mbx1")["state"] == "enabled"
    assert backend_state(b, "mbx1")["drained_by_responder"]  # node-b's own verdict stays
