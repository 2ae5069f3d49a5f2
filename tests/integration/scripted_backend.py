"""A tiny scripted IMAP backend for faults a real Dovecot cannot produce on demand.

It greets, accepts any LOGIN/AUTHENTICATE, answers CAPABILITY, NOOP,
SELECT and LOGOUT like a server would, and hands every other command line
to a test-supplied ``on_command(conn, tag, line)`` that writes what it likes
(a partial FETCH literal, say) and may close the connection. Health probes
that reach it see an ordinary server.

    def die_mid_literal(conn, tag, line):
        conn.sendall(b"* 1 FETCH (BODY[] {1000}\\r\\n" + b"x" * 400)
        return False                      # False: close the connection now

    with ScriptedBackend(die_mid_literal) as b:   # 127.0.0.1:<free port>
        ... b.address ...

One thread per connection; every socket has a timeout; stop() closes the
listener and every connection. Loopback only.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+ IDLE] scripted backend ready\r\n"
CAPABILITIES = b"IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+ IDLE"

# on_command(conn, tag, line) -> keep the connection open?
CommandHandler = Callable[[socket.socket, str, bytes], bool]


class ScriptedBackend:
    def __init__(self, on_command: CommandHandler, host: str = "127.0.0.1", timeout: float = 30.0):
        self.on_command = on_command
        self.host = host
        self.timeout = timeout
        self.port = 0
        self.logins = 0
        self._listener: Optional[socket.socket] = None
        self._conns: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list = []

    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def start(self) -> "ScriptedBackend":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, 0))
        ls.listen(64)
        ls.settimeout(0.1)
        self._listener = ls
        self.port = ls.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="scripted-backend", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.timeout)
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="scripted-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            conn.sendall(GREETING)
            while not self._stop.is_set():
                i = buf.find(b"\r\n")
                if i < 0:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                line, buf = buf[:i], buf[i + 2:]
                if not self._answer(conn, line):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, line: bytes) -> bool:
        parts = line.split(b" ", 2)
        tag = parts[0].decode(errors="replace")
        verb = parts[1].upper() if len(parts) > 1 else b""
        if verb in (b"LOGIN", b"AUTHENTICATE"):
            self.logins += 1
            conn.sendall(b"%s OK [CAPABILITY %s] Logged in\r\n" % (tag.encode(), CAPABILITIES))
        elif verb == b"CAPABILITY":
            conn.sendall(b"* CAPABILITY %s\r\n%s OK done\r\n" % (CAPABILITIES, tag.encode()))
        elif verb == b"NOOP":
            conn.sendall(b"%s OK NOOP completed\r\n" % tag.encode())
        elif verb in (b"SELECT", b"EXAMINE"):
            conn.sendall(b"* 1 EXISTS\r\n* 0 RECENT\r\n%s OK [READ-WRITE] done\r\n" % tag.encode())
        elif verb == b"LOGOUT":
            conn.sendall(b"* BYE logging out\r\n%s OK done\r\n" % tag.encode())
            return False
        else:
            return self.on_command(conn, tag, line)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> "ScriptedBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
