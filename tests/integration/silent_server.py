"""A TCP server that accepts connections and never says anything.

Stands in for a mailbox backend that is up at the TCP level but hung (the
greeting never comes): what a real Dovecot cannot be made to do on demand.
Used by test_health.py as a third backend whose probes must end TimedOut at
the `greeting` step instead of hanging.

    with SilentServer() as s:          # listens on 127.0.0.1:<free port>
        ... s.address, s.accepted ...

Everything it reads is discarded; connections stay open until the peer
closes them or stop() runs. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Optional


class SilentServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_connections: int = 1000):
        self.host = host
        self._want_port = port
        self.max_connections = max_connections
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._listener: Optional[socket.socket] = None
        self._conns: set = set()
        self._sel: Optional[selectors.BaseSelector] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> "SilentServer":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self._want_port))
        ls.listen(128)
        ls.setblocking(False)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(ls, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="silent-server", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sel is not None and self._listener is not None
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                if key.fileobj is self._listener:
                    try:
                        conn, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        continue
                    self.accepted += 1
                    with self._lock:
                        if len(self._conns) >= self.max_connections:
                            conn.close()
                            continue
                        self._conns.add(conn)
                    conn.setblocking(False)
                    self._sel.register(conn, selectors.EVENT_READ, None)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # the peer left: forget it
                    self._drop(conn)
        for conn in list(self._conns):
            self._drop(conn)
        try:
            self._sel.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()
        self._sel.close()

    def _drop(self, conn: socket.socket) -> None:
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._conns.discard(conn)
        try:
            conn.close()
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "SilentServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "SilentServer(%s)" % self.address
