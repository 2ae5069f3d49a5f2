"""[backend_pool]: backend connections opened and greeted ahead of logins.

Against real Dovecot: logins take pooled connections (the pool counters in
the admin `stats` reply say so) and the client sees exactly what it sees
without a pool; a Dovecot restart closes the pooled connections and none of
them is handed to a client; unused connections expire after idle_timeout;
a drained backend's pool is emptied and refilled once enabled. A scripted
backend (harness's ScriptedBackend) closes the pooled connection a login was
sent on, which Dovecot cannot do on demand: the login still succeeds over a
fresh connection. A proxy_protocol backend never gets a pooled connection.
Backends with STARTTLS and implicit TLS get pooled connections whose TLS is
already up when a session takes them.
"""

import socket

import pytest

from harness import PASSWORD, Dovecot, ImapConn, wait_until
from scripted_backend import ScriptedBackend


def pool_stats(p, backend: str) -> dict:
    return p.admin("stats")["backends"][backend]


def pool_config(size: int, idle: str = "30s") -> dict:
    return {"workers": 1, "backend_pool": {"size": size, "idle_timeout": idle}}


def wait_ready(p, backend: str, n: int, timeout: float = 10.0) -> dict:
    last = {}

    def ready():
        last.update(pool_stats(p, backend))
        return last["pool_ready"] == n

    assert wait_until(ready, timeout), "pool of %s never had %d ready: %r" % (backend, n, last)
    return last


def login_logout(port: int, user: str = "alice") -> tuple:
    """LOGIN, SELECT, LOGOUT through `port`; the LOGIN's tagged reply and SELECT's untagged."""
    c = ImapConn(port)
    try:
        tagged = c.login(user)
        assert tagged.split(b" ")[1] == b"OK", tagged
        untagged = c.ok("SELECT INBOX")
        c.command("LOGOUT")
        return tagged, untagged
    finally:
        c.close()


def test_logins_take_pooled_connections_and_clients_see_no_difference(portico_factory, backends):
    d = backends[0]
    p = portico_factory([d], config=pool_config(2))
    wait_ready(p, d.name, 2)
    with_pool = [login_logout(p.port) for _ in range(3)]
    s = wait_ready(p, d.name, 2)  # refilled after each take
    assert s["pool_hits"] == 3 and s["pool_misses"] == 0, s
    assert s["pool_opened"] >= 5, s
    assert s["connect_failures"] == 0 and s["pool_stale"] == 0, s

    p.reload(pool_config(0))
    assert wait_until(lambda: pool_stats(p, d.name)["pool_ready"] == 0, 10), pool_stats(p, d.name)
    without = login_logout(p.port)
    assert pool_stats(p, d.name)["pool_hits"] == 3, "no pool after the reload"
    assert with_pool[0] == without, "the client sees the same replies with and without the pool"


def test_pooled_connections_the_backend_closed_are_never_handed_out(portico_factory, dovecot_factory):
    d = dovecot_factory("pool1")
    p = portico_factory([d], config=pool_config(2))
    wait_ready(p, d.name, 2)
    d.stop()
    # Dovecot's end closes both pooled connections: counted, not kept.
    assert wait_until(lambda: pool_stats(p, d.name)["pool_lost"] >= 2, 10), pool_stats(p, d.name)
    assert pool_stats(p, d.name)["pool_ready"] == 0
    d.start()
    # Refilled once Dovecot is back (the backoff stays bounded), and the
    # logins that follow all succeed.
    wait_ready(p, d.name, 2, timeout=40)
    for _ in range(3):
        login_logout(p.port, "bob")
    s = pool_stats(p, d.name)
    assert s["pool_hits"] >= 1, s
    assert p.admin("stats")["logins_unavailable"] == 0


class DiesOnFirstLogin(ScriptedBackend):
    """Closes, without an answer, the first connection a LOGIN arrives on."""

    def __init__(self):
        super().__init__(lambda conn, tag, line: True)
        self.killed = 0

    def _answer(self, conn, line):
        if b" LOGIN " in line.upper() and self.killed == 0:
            self.killed += 1
            return False
        return super()._answer(conn, line)


def test_a_taken_connection_that_dies_falls_back_to_a_fresh_connect(portico_factory):
    with DiesOnFirstLogin() as fake:
        backend = {"name": "fake", "address": fake.address, "weight": 1,
                   "forward_id": False, "proxy_protocol": False}
        p = portico_factory([], config=dict(pool_config(1), backend=[backend]))
        wait_ready(p, "fake", 1)
        c = ImapConn(p.port)
        try:
            tagged = c.login("alice")
            assert tagged.split(b" ")[1] == b"OK", tagged
            c.ok("NOOP")
        finally:
            c.close()
        assert fake.killed == 1 and fake.logins == 1, (fake.killed, fake.logins)
        s = pool_stats(p, "fake")
        assert s["pool_hits"] == 1 and s["pool_stale"] == 1, s
        assert s["connect_failures"] == 0, s


def test_idle_pooled_connections_expire_and_are_replaced(portico_factory, backends):
    d = backends[1]
    p = portico_factory([d], config=pool_config(1, "1s"))
    wait_ready(p, d.name, 1)
    assert wait_until(lambda: pool_stats(p, d.name)["pool_expired"] >= 2, 10), pool_stats(p, d.name)
    # The replacement for the second expired connection counts as opened
    # only once Dovecot has greeted it, a moment after the expiry: wait for
    # it rather than read the counter at once.
    assert wait_until(lambda: pool_stats(p, d.name)["pool_opened"] >= 3, 10), pool_stats(p, d.name)
    s = pool_stats(p, d.name)
    assert s["pool_ready"] <= 1, s
    login_logout(p.port, "carol")


def test_a_proxy_protocol_backend_never_gets_a_pool(portico_factory, backends):
    d = backends[0]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        pxy = {"name": "pxy", "address": "127.0.0.1:%d" % listener.getsockname()[1], "weight": 1,
               "forward_id": False, "proxy_protocol": True}
        plain = {"name": d.name, "address": d.address, "weight": 1,
                 "forward_id": False, "proxy_protocol": False}
        p = portico_factory([], config=dict(pool_config(2), backend=[pxy, plain]))
        # The same fill pass connected the plain backend's pool: by the time
        # it is greeted, any connect to pxy would be waiting in its backlog.
        wait_ready(p, d.name, 2)
        with pytest.raises(BlockingIOError):
            listener.accept()
        s = pool_stats(p, "pxy")
        assert s["pool_ready"] == 0 and s["pool_opened"] == 0 and s["pool_lost"] == 0, s
    finally:
        listener.close()


def test_a_drained_backends_pool_is_emptied_and_refilled_once_enabled(portico_factory, backends):
    d = backends[0]
    p = portico_factory([d], config=pool_config(2))
    wait_ready(p, d.name, 2)
    assert p.admin("backend drain %s" % d.name)["ok"] is True
    wait_ready(p, d.name, 0)
    opened = pool_stats(p, d.name)["pool_opened"]
    assert p.admin("backend enable %s" % d.name)["ok"] is True
    wait_ready(p, d.name, 2)
    assert pool_stats(p, d.name)["pool_opened"] == opened + 2


def test_password_never_reaches_pooled_connection_logs(portico_factory, backends):
    d = backends[1]
    p = portico_factory([d], config=pool_config(1))
    wait_ready(p, d.name, 1)
    login_logout(p.port, "dave")
    assert PASSWORD not in p.log_text()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_backends_are_pooled_with_tls_already_up(portico_factory, pki, mode):
    d = Dovecot("pooltls", tls={"cert": pki.mail.cert, "key": pki.mail.key, "required": True})
    try:
        d.start()
        backend = {"name": "tls", "weight": 1, "tls": mode, "ca": str(pki.ca),
                   "server_name": "mail.test", "forward_id": True, "proxy_protocol": False,
                   "address": d.imaps_address if mode == "implicit" else d.address}
        p = portico_factory([], config=dict(pool_config(2), backend=[backend]))
        wait_ready(p, "tls", 2)
        tagged, _ = login_logout(p.port, "erin")
        assert b"OK" in tagged
        s = pool_stats(p, "tls")
        assert s["pool_hits"] == 1 and s["pool_misses"] == 0 and s["pool_stale"] == 0, s
        # The login went over TLS: Dovecot requires it ("required": True)
        # and logged it with its TLS marker.
        assert wait_until(lambda: "user=<erin>" in d.log_text() and "TLS" in d.log_text(), 10), \
            d.log_text()[-2000:]
    finally:
        d.cleanup()
