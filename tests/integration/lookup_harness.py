"""Harness for the directory-lookup tests: a real redis-server, a real nginx
with its mail module, and Portico's lookup stage through the lookup_probe
test tool. Everything listens on 127.0.0.1 and every wait is bounded.

RedisServer
    redis-server on a free loopback port, with its own temp dir, no
    persistence (--save '' --appendonly no). ``start()`` returns once PING
    answers; ``stop()`` (SIGTERM, SIGKILL after 5 s), ``pause()``/``resume()``
    (SIGSTOP/SIGCONT: a server that stops answering), ``start()`` again on the
    same port. A tiny RESP client: ``set``, ``delete``, ``command``.

Nginx
    nginx (Debian's, ``load_module`` of /usr/lib/nginx/modules/
    ngx_mail_module.so) as a foreground single process with its own prefix,
    config, pid and error log in a temp dir; one IMAP ``server`` on
    127.0.0.1:<port> whose ``auth_http`` is the given URL. Optional TLS
    (implicit) with a cert/key. ``start()`` returns once the greeting is read.

LookupProbe
    tests/tools/lookup_probe (env LOOKUP_PROBE_BIN, default
    build/tests/lookup_probe) with a [lookup] table: ``once(...)`` runs one
    lookup; as a context manager it keeps the tool running and ``lookup()``,
    ``send()``, ``wait_tag()`` talk JSON lines with it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from harness import REPO_ROOT, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


def probe_bin() -> str:
    return os.environ.get("LOOKUP_PROBE_BIN", str(REPO_ROOT / "build" / "tests" / "lookup_probe"))


def toml_string(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string here


def lookup_toml(table: dict) -> str:
    lines = ["[lookup]"]
    for key, value in table.items():
        if isinstance(value, dict):
            inner = ", ".join("%s = %s" % (toml_string(k), toml_string(v)) for k, v in value.items())
            lines.append("%s = { %s }" % (key, inner))
        elif isinstance(value, bool):
            lines.append("%s = %s" % (key, "true" if value else "false"))
        elif isinstance(value, int):
            lines.append("%s = %d" % (key, value))
        else:
            lines.append("%s = %s" % (key, toml_string(value)))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Redis


def _resp(*args: str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


class RedisServer:
    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="portico-redis-"))
        self.proc: Optional[subprocess.Popen] = None
        self.paused = False

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def start(self, timeout: float = 10.0) -> "RedisServer":
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: %s" % (self.dir / "redis.log").read_text())
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within %ss" % timeout)

    def command(self, *args: str, timeout: float = 5.0):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(_resp(*args))
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("redis closed the connection")
                buf += chunk
            kind, rest = buf[:1], buf[1:]
            line = rest.split(b"\r\n", 1)[0].decode()
            if kind in (b"+", b":"):
                return line
            if kind == b"-":
                raise RuntimeError("redis: " + line)
            if kind == b"$":
                n = int(line)
                if n < 0:
                    return None
                body = rest.split(b"\r\n", 1)[1]
                while len(body) < n + 2:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("redis closed the connection")
                    body += chunk
                return body[:n].decode()
            raise RuntimeError("unexpected reply %r" % buf)

    def set(self, key: str, value: str) -> None:
        assert self.command("SET", key, value) == "OK"

    def delete(self, key: str) -> None:
        self.command("DEL", key)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# nginx mail


class Nginx:
    def __init__(self, auth_url: str, extra_headers: Optional[dict] = None,
                 tls: Optional[tuple] = None):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="portico-nginx-"))
        self.auth_url = auth_url
        self.extra_headers = extra_headers or {}
        self.tls = tls  # (cert, key) paths: implicit TLS on the listener
        self.proc: Optional[subprocess.Popen] = None

    def config(self) -> str:
        headers = "".join("    auth_http_header %s \"%s\";\n" % (k, v)
                          for k, v in self.extra_headers.items())
        ssl = ""
        listen = "127.0.0.1:%d" % self.port
        if self.tls:
            listen += " ssl"
            ssl = "    ssl_certificate %s;\n    ssl_certificate_key %s;\n" % self.tls
        return (
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            "pid %(dir)s/nginx.pid;\nerror_log %(dir)s/error.log info;\n"
            "load_module %(module)s;\n"
            "events { worker_connections 64; }\n"
            "mail {\n"
            "    server_name portico-test;\n"
            "    auth_http %(auth)s;\n"
            "    auth_http_timeout 5s;\n"
            "%(headers)s"
            "    proxy_pass_error_message on;\n"
            "    server {\n"
            "        listen %(listen)s;\n"
            "        protocol imap;\n"
            "        imap_auth plain login;\n"
            "%(ssl)s"
            "    }\n"
            "}\n" % {"dir": self.dir, "module": NGINX_MAIL_MODULE, "auth": self.auth_url,
                     "headers": headers, "listen": listen, "ssl": ssl})

    def start(self, timeout: float = 10.0) -> "Nginx":
        (self.dir / "nginx.conf").write_text(self.config())
        log = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
             "-e", str(self.dir / "error.log")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited:\n" + self.log_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if self.tls:
                        return self  # the TLS greeting needs a handshake; the port is up
                    s.settimeout(2)
                    if s.recv(64).startswith(b"* OK"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("nginx did not greet within %ss:\n%s" % (timeout, self.log_text()))

    def log_text(self) -> str:
        out = ""
        for name in ("stderr.log", "error.log"):
            p = self.dir / name
            if p.exists():
                out += p.read_text(errors="replace")
        return out

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# lookup_probe


class LookupProbe:
    """The lookup stage in a process of its own, fed JSON lines."""

    def __init__(self, lookup: dict, tmpdir: Path):
        self.config_path = Path(tmpdir) / ("lookup-%d.toml" % id(self))
        self.config_path.write_text(lookup_toml(lookup))
        self.proc: Optional[subprocess.Popen] = None
        self.lines: "queue.Queue[dict]" = queue.Queue()
        self.stderr = b""
        self._pending: list = []

    def once(self, user: str, password: str = "", timeout: float = 15.0, **options) -> dict:
        """One lookup in a fresh process: the result line."""
        args = [probe_bin(), "--config", str(self.config_path), "--user", user,
                "--password", password]
        for key, value in options.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        done = subprocess.run(args, capture_output=True, timeout=timeout)
        assert done.returncode == 0, "lookup_probe failed (%d): %s" % (
            done.returncode, done.stderr.decode(errors="replace"))
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def __enter__(self) -> "LookupProbe":
        self.proc = subprocess.Popen([probe_bin(), "--config", str(self.config_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))

    def send(self, obj: dict) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def next_line(self, timeout: float = 10.0) -> dict:
        if self._pending:
            return self._pending.pop(0)
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("lookup_probe said nothing within %ss" % timeout)

    def wait_tag(self, tag: str, timeout: float = 10.0) -> dict:
        """The line for `tag`; other lines are kept for later calls."""
        deadline = time.monotonic() + timeout
        for i, line in enumerate(self._pending):
            if line.get("tag") == tag:
                return self._pending.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no answer for %r within %ss" % (tag, timeout))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.get("tag") == tag:
                return line
            self._pending.append(line)

    def lookup(self, tag: str, user: str, password: str = "pw", timeout: float = 10.0,
               **fields) -> dict:
        self.send(dict(op="lookup", tag=tag, user=user, password=password, **fields))
        return self.wait_tag(tag, timeout)

    def stats(self) -> dict:
        self.send({"op": "stats"})
        while True:
            line = self.next_line()
            if line.get("op") == "stats":
                return line
            self._pending.append(line)

    def close(self, timeout: float = 10.0) -> dict:
        """Ends the input; returns the tool's exit line (loop_closed)."""
        self.proc.stdin.close()
        self.proc.wait(timeout)
        self.stderr = self.proc.stderr.read()
        assert self.proc.returncode == 0, "lookup_probe exited %d: %s" % (
            self.proc.returncode, self.stderr.decode(errors="replace"))
        while True:
            line = self.next_line(timeout=2)
            if line.get("op") == "exit":
                return line

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
