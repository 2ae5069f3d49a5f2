"""The whole fleet topology of issue 11 at once, all on loopback: a real
redis-server, the two Dovecot backends, three Portico nodes with PROXY
protocol listeners and real HAProxy in front of them (send-proxy-v2,
checks of each node's /readyz). Clients connect to HAProxy from 127.0.0.2.

One test walks what an operator relies on, in order:
- every node shows the client's own address (from HAProxy's PROXY v2
  header), not HAProxy's, in its sessions and in the fleet's registry;
- a user's session limit holds across the nodes behind HAProxy;
- a drain made on one node steers the logins arriving through HAProxy on
  every node;
- the Portico node that made the drain, killed with SIGKILL, leaves
  HAProxy's rotation and its client's connection closes; the survivors go
  on with the shared state: the drain stays, a hold placed now refuses the
  user on each of them;
- Redis killed: logins through HAProxy go on (on_redis_down = "local"); Redis
  restarted empty: the survivors publish the drain and the hold again.

Every wait polls for its condition with a deadline.
"""

import pytest

from harness import ImapConn, free_port, wait_until
from haproxy_harness import HAProxy
from lookup_harness import RedisServer

CLIENT_IP = "127.0.0.2"


def node_config(port, redis_address, name):
    return {"workers": 1,
            "listen": [{"address": "127.0.0.1:%d" % port, "proxy_protocol": True,
                        "trusted_networks": ["127.0.0.0/8"]}],
            "limits": {"max_sessions_per_user": 2},
            "fleet": {"redis": redis_address, "node": name, "on_redis_down": "local",
                      "session_ttl": "3s"}}


def front_conn(port):
    """An IMAP connection to HAProxy's front port from CLIENT_IP."""
    return ImapConn(port, source=CLIENT_IP)


def login_through(port, user):
    """LOGIN through HAProxy; returns (tagged reply, client port)."""
    with front_conn(port) as c:
        return c.login(user), c.local_port


def sessions_of(nodes, user):
    return [(n, s) for n in nodes for s in n.admin("sessions --user %s" % user)["sessions"]]


def drained(p, backend):
    return any(b["name"] == backend and b["drained_by_operator"]
               for b in p.admin("backend list")["backends"])


def test_fleet_behind_haproxy_survives_a_killed_node_and_a_redis_restart(portico_factory,
                                                                           backends):
    redis = RedisServer().start()
    lb = HAProxy()
    try:
        nodes = []
        for name in ("node-a", "node-b", "node-c"):
            port = free_port()
            nodes.append(portico_factory(backends, config=node_config(port, redis.address, name),
                                         listen_port=port))
        front = lb.add_frontend("imap", [("127.0.0.1", n.port, n.status_port) for n in nodes],
                                send_proxy="v2", check=True)
        lb.start()
        assert wait_until(lambda: all(n.admin("fleet")["fleet"]["connected"] for n in nodes), 10)

        # The client's own address, on whichever node HAProxy chose.
        held = front_conn(front)
        assert held.login("user01").startswith(b"a001 OK")
        where = sessions_of(nodes, "user01")
        assert len(where) == 1, where
        held_node, held_session = where[0]
        assert held_session["client"] == "%s:%d" % (CLIENT_IP, held.local_port)

        # The fleet's registry shows that client's address too, from any
        # node; and its user's session limit (2) holds across the nodes: a
        # second session lands on another node, a third is refused there.
        def registry():
            return nodes[-1].admin("sessions --fleet --user user01")["sessions"]

        assert wait_until(lambda: len(registry()) == 1, 10), registry()
        assert registry()[0]["client"] == held_session["client"], registry()
        second = front_conn(front)
        assert second.login("user01").startswith(b"a001 OK")

        def third_refused() -> bool:
            with front_conn(front) as third:
                return third.login("user01").startswith(b"a001 NO [LIMIT]")

        assert wait_until(third_refused, 10)
        second.close()

        # A drain on that node steers logins on every node: three sessions in a
        # row go round the three nodes and all land on mbx2.
        assert held_node.admin("backend drain mbx1")["fleet"] == "published"
        assert wait_until(lambda: all(drained(n, "mbx1") for n in nodes), 5)
        users = ("user02", "user03", "user04")
        conns = [front_conn(front) for _ in users]
        try:
            for conn, user in zip(conns, users):
                assert conn.login(user).startswith(b"a001 OK"), user
            placed = [x for u in users for x in sessions_of(nodes, u)]
            assert sorted(n.port for n, _ in placed) == sorted(n.port for n in nodes), placed
            assert {s["backend"] for _, s in placed} == {"mbx2"}, placed
        finally:
            for conn in conns:
                conn.close()

        # The node holding the first client, where the drain was made, dies
        # without a word; HAProxy takes it out of rotation and closes that
        # client's connection.
        held_node.kill()
        survivors = [n for n in nodes if n is not held_node]
        with pytest.raises((EOFError, OSError)):
            held.ok("NOOP")
        held.close()

        def every_try_greets() -> bool:
            for _ in range(4):
                try:
                    with front_conn(front) as conn:
                        if not conn.greeting.startswith(b"* OK"):
                            return False
                except (OSError, EOFError):  # HAProxy tried the dead node
                    return False
            return True

        assert wait_until(every_try_greets, 10), lb.log_text()[-2000:]
        # The survivors keep the drain, and a hold placed now reaches both.
        assert all(drained(n, "mbx1") for n in survivors)
        assert survivors[-1].admin("user hold user05 --ttl 10m")["fleet"] == "published"
        for n in survivors:
            assert wait_until(lambda: "user05" in str(n.admin("user list")), 5), n
        for _ in range(4):  # roundrobin over the two survivors, twice each
            reply, _ = login_through(front, "user05")
            assert reply.startswith(b"a001 NO [UNAVAILABLE]"), reply

        # Redis killed: logins through HAProxy go on with the last state.
        port = redis.port
        redis.stop()
        assert wait_until(lambda: not any(n.admin("fleet")["fleet"]["connected"]
                                          for n in survivors), 10)
        for _ in range(2):
            reply, _ = login_through(front, "user06")
            assert reply.startswith(b"a001 OK"), reply
            reply, _ = login_through(front, "user05")
            assert reply.startswith(b"a001 NO [UNAVAILABLE]"), reply
        # Restarted empty: the survivors publish what they know again.
        redis = RedisServer(port=port).start()
        assert wait_until(lambda: all(n.admin("fleet")["fleet"]["connected"] for n in survivors),
                          10)
        assert wait_until(lambda: (redis.command("HGET", "portico:fleet:backends", "mbx1")
                                   or "").startswith("drained "), 5)
        assert wait_until(lambda: redis.command("EXISTS", "portico:fleet:hold:user05") == "1", 5)
    finally:
        lb.cleanup()
        redis.cleanup()
