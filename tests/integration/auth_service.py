#!/usr/bin/env python3
"""A recording nginx auth_http service for the lookup tests (and the demo).

It listens on 127.0.0.1, reads each request's head (bounded), records it
(request line, headers in order and the raw bytes) in memory and, when asked,
as one JSON line per request in a file, and answers from a scripted table
keyed by the decoded Auth-User.

An action is a dict:

    {"status": "OK", "server": "127.0.0.1", "port": 143}       route
        optional "pass" (Auth-Pass; default: the request's own password;
        None: no Auth-Pass),
        "user" (Auth-User), "headers" ({name: value}, sent as well),
        "check_password": "pw" (answer "Invalid login or password" unless
        the request's password is this one, as a real service does)
    {"status": "Invalid login or password", "wait": 3}        refusal (+ Auth-Wait)
    {"status": "WAIT", "wait": 1, "rounds": 1, "then": {...}}
                        WAIT (+ Auth-Wait) for the first `rounds` requests of
                        that user, then `then`
    {"mode": "never"}   keep the connection, never answer (until the client
                        closes it, the service stops, or 30 s)
    {"mode": "close"}   close the connection without a word
    {"mode": "raw", "data": "..."}  send these bytes as the answer
    {"mode": "barrier", "count": N, "then": {...}}  answer only once N such
                        requests are open at the same time (proves that a
                        client runs its lookups concurrently)

The script is a dict {user: action} with an optional "*" default, or a
callable(record) -> action. Every wait here is bounded.

Standalone: auth_service.py --port P --script script.json [--record out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import threading
import time
import urllib.parse
from typing import Callable, Optional, Union

MAX_HEAD = 64 * 1024
NEVER_LIMIT = 30.0


def unescape(value: str) -> str:
    """nginx's Auth-User/Auth-Pass escaping undone (%XX, as latin-1 text)."""
    return urllib.parse.unquote(value, encoding="latin-1")


def parse_head(raw: bytes) -> dict:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        headers.append([name, value.strip()])
    record = {"request_line": lines[0], "headers": headers, "raw": text, "time": time.time()}
    by_name = {n.lower(): v for n, v in headers}
    record["user"] = unescape(by_name.get("auth-user", ""))
    record["password"] = unescape(by_name.get("auth-pass", ""))
    return record


class AuthService:
    def __init__(self, script: Union[dict, Callable] = None, record_path: Optional[str] = None,
                 port: int = 0):
        self.script = script if script is not None else {}
        self.record_path = record_path
        self.records: list = []
        self.closed_by_client = 0  # "never" connections the client closed
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._barriers: dict = {}
        self._wait_rounds: dict = {}
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                service._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/auth" % self.port

    def start(self) -> "AuthService":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- waiting for events, not for time

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: len(self.records) >= n, timeout)

    def requests_for(self, user: str) -> list:
        with self._cond:
            return [r for r in self.records if r["user"] == user]

    # ---- serving

    def _action_for(self, record: dict) -> dict:
        if callable(self.script):
            return self.script(record)
        return self.script.get(record["user"], self.script.get("*", {"status": "Unknown user"}))

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        raw = b""
        try:
            while b"\r\n\r\n" not in raw and len(raw) < MAX_HEAD:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                raw += chunk
        except OSError:
            return
        record = parse_head(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        with self._cond:
            self.records.append(record)
            if self.record_path:
                with open(self.record_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self._cond.notify_all()
        self._answer(sock, record, self._action_for(record))

    def _answer(self, sock: socket.socket, record: dict, action: dict) -> None:
        mode = action.get("mode")
        if mode == "never":
            sock.settimeout(0.05)
            deadline = time.monotonic() + NEVER_LIMIT
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    if sock.recv(1) == b"":
                        with self._cond:
                            self.closed_by_client += 1
                            self._cond.notify_all()
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return
            return
        if mode == "close":
            sock.close()
            return
        if mode == "raw":
            sock.sendall(action["data"].encode("latin-1"))
            return
        if mode == "barrier":
            key = id(action)
            with self._cond:
                barrier = self._barriers.setdefault(key, threading.Barrier(action["count"]))
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                sock.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: Barrier broken\r\n\r\n")
                return
            return self._answer(sock, record, action["then"])
        status = action.get("status", "OK")
        if status == "WAIT":
            key = (record["user"], id(action))
            with self._cond:
                rounds = self._wait_rounds.get(key, 0)
                self._wait_rounds[key] = rounds + 1
            if rounds >= action.get("rounds", 1):
                return self._answer(sock, record, action["then"])
        headers = [("Auth-Status", status)]
        if status == "OK" and "check_password" in action and \
                record["password"] != action["check_password"]:
            headers = [("Auth-Status", "Invalid login or password"), ("Auth-Wait", "0")]
        elif status == "OK":
            if "server" in action:
                headers.append(("Auth-Server", action["server"]))
            if "port" in action:
                headers.append(("Auth-Port", str(action["port"])))
            if "user" in action:
                headers.append(("Auth-User", action["user"]))
            password = action.get("pass", record["password"])
            if password is not None:  # "pass": None sends no Auth-Pass
                headers.append(("Auth-Pass", password))
        if "wait" in action:
            headers.append(("Auth-Wait", str(action["wait"])))
        for name, value in action.get("headers", {}).items():
            headers.append((name, value))
        head = "HTTP/1.0 200 OK\r\n" + "".join("%s: %s\r\n" % h for h in headers) + "\r\n"
        try:
            sock.sendall(head.encode("latin-1") + b"this body is ignored\r\n")
        except OSError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--script", help="JSON file: {user: action}")
    ap.add_argument("--record", help="append each request as a JSON line here")
    args = ap.parse_args()
    script = {}
    if args.script:
        with open(args.script) as f:
            script = json.load(f)
    service = AuthService(script, args.record, args.port).start()
    print("auth service on 127.0.0.1:%d" % service.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        service.stop()


if __name__ == "__main__":
    main()
