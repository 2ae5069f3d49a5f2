"""Integration-test harness: real Dovecot backends and a Portico process.

Used by the pytest suite in this folder and by scripts/demo.py. Everything
here stays on loopback and every wait is bounded.

Dovecot
    One real Dovecot instance (run as root, mail owned by an unprivileged
    user) with its own base_dir, state_dir, passwd-file users, maildirs and
    log, listening on 127.0.0.1:<port>. ``start()`` returns once the port
    answers with an IMAP greeting; ``stop()`` is SIGTERM (SIGKILL after
    5 s); ``kill()`` SIGKILLs the whole process group, so the imap children
    die with the master, which is what "the backend dies mid-session" means.
    ``start()`` again reuses the same port and maildirs. With ``tls=``
    (cert/key paths) it also does TLS: STARTTLS on the plain port and
    implicit TLS on ``imaps_port``. Besides ``users`` (all with one
    password) it always has ``UTF8_USER`` with ``UTF8_PASSWORD``: a UTF-8
    name and password, as UTF8=ACCEPT clients send them. With
    ``haproxy=True`` it also has
    listeners that expect a PROXY protocol header from 127.0.0.0/8 first
    (``haproxy_port``, plain/STARTTLS; ``haproxy_imaps_port``, implicit
    TLS, with ``tls=``), and its login lines show the client address the
    header carried (rip/rport) beside the connection's own (real_rip/real_rport).

Portico
    Writes a TOML config (from a dict or a template string), starts the
    binary (env PORTICO_BIN, default <repo>/build/proxy/portico) and waits
    for its ``ready:`` line on stderr. A reader thread copies stderr to a
    log file and keeps the lines in memory so tests can wait for a line
    without polling.

Also small raw-socket IMAP helpers (``ImapConn``) for what imaplib cannot
express: pipelining, IDLE, byte-exact tagged answers, abrupt closes.
"""

from __future__ import annotations

import base64
import copy
import grp
import hashlib
import json
import os
import pwd
import re
import resource
import shutil
import signal
import random
import socket
import string
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "secret-PW-123"
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] + [
    "user%02d" % i for i in range(100)
]
# A user whose name and password are UTF-8 (2-, 3- and 4-byte sequences).
UTF8_USER = "j\u00f6rg-\u6771"
UTF8_PASSWORD = "p\u00e4ssw\u00f6rd-\u20ac-\U0001f511"

DOVECOT_BIN = shutil.which("dovecot") or "/usr/sbin/dovecot"
# Unprivileged owner of the maildirs; Dovecot's imap processes run as it.
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"


def portico_bin() -> str:
    return os.environ.get("PORTICO_BIN", str(REPO_ROOT / "build" / "proxy" / "portico"))


def porticoctl_bin() -> str:
    """The admin client (env PORTICOCTL_BIN, default next to the default portico)."""
    return os.environ.get("PORTICOCTL_BIN", str(REPO_ROOT / "build" / "proxy" / "porticoctl"))


def admin_line(words) -> str:
    """One admin-socket request line from words, quoted as admin.cc's
    splitAdminLine reads them (double quotes, backslash escapes)."""
    out = []
    for w in words:
        if w and not any(c in w for c in ' \t\r"\\'):
            out.append(w)
        else:
            out.append('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def admin_request(path, command, timeout: float = 10.0) -> dict:
    """Sends one command (a line, or a list of words) to an admin socket and
    returns the parsed JSON reply. Every read is bounded by timeout."""
    line = command if isinstance(command, str) else admin_line(command)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(line.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf.strip():
        raise AssertionError("admin socket %s: no reply to %r" % (path, line))
    return json.loads(buf.split(b"\n", 1)[0])


PROTOCOL_LOG_HEADER_PREFIXES = ("#Software: ", "#Version: ", "#Log-type: ", "#Date: ", "#Fields: ")


def protocol_log_files(directory) -> list:
    """The protocol log's files in directory, oldest first (period, then N)."""
    d = Path(directory)
    found = []
    try:
        entries = list(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for p in entries:
        m = re.fullmatch(r"(.*?)(\d{8}|\d{10})-(\d+)\.LOG", p.name)
        if m:
            found.append((m.group(2), int(m.group(3)), p))
    return [p for _, _, p in sorted(found)]


def parse_protocol_log(data: bytes) -> tuple:
    """One protocol log file's bytes -> (header lines, rows as dicts).

    Lines end in CRLF; rows are CSV with the #Fields columns."""
    import csv
    import io

    text = data.decode("utf-8")
    assert text == "" or text.endswith("\r\n"), "protocol log does not end in CRLF: %r" % text[-80:]
    lines = text.split("\r\n")[:-1] if text else []
    assert all("\n" not in l and "\r" not in l for l in lines), "bare CR/LF inside a protocol log line"
    headers = [l for l in lines if l.startswith("#")]
    fields = None
    for h in headers:
        if h.startswith("#Fields: "):
            fields = h[len("#Fields: "):].split(",")
    rows = []
    for l in lines:
        if l.startswith("#"):
            continue
        values = next(csv.reader(io.StringIO(l)))
        assert fields is not None, "a row before #Fields"
        assert len(values) == len(fields), "row has %d columns, not %d: %r" % (len(values), len(fields), l)
        rows.append(dict(zip(fields, values)))
    return headers, rows


def read_protocol_log(directory) -> list:
    """All rows of all protocol log files in directory (file order, then line order)."""
    rows = []
    for p in protocol_log_files(directory):
        rows.extend(parse_protocol_log(p.read_bytes())[1])
    return rows


def _ephemeral_range() -> tuple:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, chosen below the
    kernel's ephemeral range: a port from that range can be taken by any
    outgoing connection (a client, a probe) between this check and the
    server's bind, which made a listener fail with "address in use"."""
    low, _ = _ephemeral_range()
    rnd = random.SystemRandom()
    for _ in range(200):
        port = rnd.randrange(max(1024, low - 16384), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    # Runs in the child before exec: lift the soft fd limit to the hard one
    # so a few hundred concurrent sessions never hit EMFILE.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------
# Sanitizer builds (CMake PORTICO_SANITIZE=ON: ASan+UBSan; PORTICO_TSAN=ON)

# Lines a sanitizer runtime prints when it reports; any of them in Portico's
# stderr fails the test that started that Portico (conftest.py).
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "AddressSanitizer:DEADLYSIGNAL",
    "ERROR: LeakSanitizer",
    "LeakSanitizer has encountered a fatal error",
    "runtime error:",  # UBSan
    "ERROR: UndefinedBehaviorSanitizer",
    "WARNING: ThreadSanitizer",
    "ThreadSanitizer: ",  # "reported N warnings", CHECK failures, unexpected memory mappings
)

# Options every Portico (and porticoctl) started here runs with, so a report
# is fatal where it should be and visible on stderr. Options already in the
# environment come after these and win (sanitizers take the last value).
SANITIZER_DEFAULTS = {
    # abort_on_error: SIGABRT, so a crashed Portico is obvious to the test;
    # detect_leaks: LeakSanitizer runs when Portico exits after SIGTERM.
    "ASAN_OPTIONS": "abort_on_error=1:halt_on_error=1:detect_leaks=1:print_summary=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:report_error_type=1",
    # TSan keeps running after a report (one run shows every race the test
    # provokes); the marker above fails the test, and exitcode makes the
    # exit status say so too. The suppressions file is commented entry by
    # entry: only uninstrumented libraries' internals are in it.
    "TSAN_OPTIONS": "halt_on_error=0:exitcode=66:second_deadlock_stack=1:suppressions=%s"
                    % (REPO_ROOT / "tests" / "tsan.supp"),
}


def sanitizer_env(base: Optional[dict] = None) -> dict:
    """A copy of base (default os.environ) with SANITIZER_DEFAULTS merged in."""
    env = dict(os.environ if base is None else base)
    for name, defaults in SANITIZER_DEFAULTS.items():
        given = env.get(name, "")
        env[name] = defaults + (":" + given if given else "")
    return env


def sanitizer_report(text: str, context: int = 4000) -> Optional[str]:
    """The first sanitizer report in text (from its marker on), or None."""
    hits = [i for i in (text.find(m) for m in SANITIZER_MARKERS) if i >= 0]
    if not hits:
        return None
    start = min(hits)
    # Include the line the marker is on, from its start.
    start = text.rfind("\n", 0, start) + 1
    return text[start:start + context]


_sanitizer_cache: dict = {}


def sanitizer_of(binary: Optional[str] = None) -> Optional[str]:
    """'asan', 'tsan' or None: which sanitizer runtime the binary links.

    For the few checks that measure the release allocator (RSS bounds):
    ASan's quarantine and redzones make resident memory say nothing about
    Portico's buffers."""
    path = binary or portico_bin()
    if path not in _sanitizer_cache:
        found = None
        try:
            with open(path, "rb") as f:
                tail = b""
                while found is None:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    data = tail + block
                    if b"__asan_init" in data:
                        found = "asan"
                    elif b"__tsan_init" in data:
                        found = "tsan"
                    tail = data[-32:]
        except OSError:
            pass
        _sanitizer_cache[path] = found
    return _sanitizer_cache[path]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    return "\n".join(text.splitlines()[-lines:])


def _make_traversable(path: Path) -> None:
    """Dovecot's unprivileged processes must be able to walk to their dirs."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            if p == path or str(p).startswith(tempfile.gettempdir() + "/"):
                os.chmod(p, mode | 0o711)
            else:
                raise RuntimeError(
                    "%s is not traversable by %s; Dovecot cannot reach its dirs below it"
                    % (p, MAIL_USER)
                )


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls pred until true or timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------
# Test messages


def make_message(subject: str, body_bytes: int = 0, marker: str = "", seed: Optional[int] = None) -> bytes:
    """A valid RFC 5322 message with CRLF lines.

    body_bytes > 0 adds that many random bytes, base64-wrapped at 76
    columns (the body is then ~4/3 of that size).
    """
    marker = marker or subject
    head = (
        "From: Portico Test <test@example.net>\r\n"
        "To: Someone <someone@example.net>\r\n"
        "Subject: %s\r\n"
        "Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
        "Message-ID: <%s@portico.test>\r\n"
        "X-Portico-Marker: %s\r\n"
        "MIME-Version: 1.0\r\n"
    ) % (subject, re.sub(r"[^A-Za-z0-9.-]", "-", marker), marker)
    if body_bytes <= 0:
        return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\nHello from %s.\r\n" % marker).encode()
    rnd = os.urandom(body_bytes) if seed is None else _seeded_bytes(body_bytes, seed)
    b64 = base64.b64encode(rnd)
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    head += "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    return head.encode() + b"\r\n".join(lines) + b"\r\n"


def _seeded_bytes(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Dovecot


_DOVECOT_CONF = """\
# Generated by tests/integration/harness.py for instance $name.
instance_name = portico-test-$name
base_dir = $base_dir
state_dir = $state_dir
protocols = imap
listen = 127.0.0.1
$ssl_settings
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
# Empty: any user name, UTF-8 too (the default allows only ASCII letters,
# digits and ".-_@").
auth_username_chars =
login_trusted_networks = 127.0.0.0/8
$haproxy_settings
log_path = $log_path
info_log_path = $log_path
debug_log_path = $log_path
mail_location = maildir:$root/mail/%u
mail_home = $root/home/%u
mail_uid = $mail_uid
mail_gid = $mail_gid
first_valid_uid = 1
first_valid_gid = 1
mail_plugins = $$mail_plugins zlib
default_client_limit = 4000
default_process_limit = 1000
verbose_proctitle = yes

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $users_file
}
userdb {
  driver = static
  args = uid=$mail_uid gid=$mail_gid
}

protocol imap {
  mail_plugins = $$mail_plugins imap_zlib
  mail_max_userip_connections = 1000
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
$imaps_listener
  }
$haproxy_listeners
  # High-performance mode: a few login processes serve every connection,
  # so hundreds of concurrent logins need no hundreds of forks.
  service_count = 0
  process_min_avail = 2
  client_limit = 1000
}

# Auth penalty (anvil delays logins from an IP after failures, 2 s and up)
# would make every login through the proxy, which all come from 127.0.0.1,
# pay for one test's wrong password. Mode 0 removes the listener, which
# disables the penalty.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

service imap {
  service_count = 100
  process_limit = 1000
}
"""


class Dovecot:
    """One real Dovecot IMAP server on 127.0.0.1:port (see module doc)."""

    def __init__(
        self,
        name: str,
        users: Iterable[str] = USERS,
        password: str = PASSWORD,
        port: Optional[int] = None,
        root: Optional[Union[str, Path]] = None,
        tls: Optional[dict] = None,
        haproxy: bool = False,
    ):
        """tls: None (plaintext only, the default) or a dict with
        cert, key (PEM paths), required (bool, default True: ssl = required;
        note Dovecot treats loopback clients as secure anyway, so check its
        log's ", TLS" login lines to see TLS was used) and imaps (bool,
        default True: an implicit-TLS listener on self.imaps_port, a second
        free port). STARTTLS is offered on the plain port either way.

        haproxy: also listen for connections that start with a PROXY
        protocol header (v1 or v2) from 127.0.0.0/8: haproxy_port (plain and
        STARTTLS) and, with tls, haproxy_imaps_port (implicit TLS, the
        header before the ClientHello)."""
        self.name = name
        self.tls = dict(tls) if tls else None
        self.imaps_port = 0
        if self.tls is not None and self.tls.get("imaps", True):
            self.imaps_port = self.tls.get("imaps_port") or free_port()
        self.haproxy = haproxy
        self.haproxy_port = free_port() if haproxy else 0
        self.haproxy_imaps_port = free_port() if haproxy and self.tls is not None else 0
        self.users = list(users)
        self.password = password
        self.port = port or free_port()
        if root is None:
            root = tempfile.mkdtemp(prefix="portico-%s-" % name)
            self._owns_root = True
        else:
            self._owns_root = False
        self.root = Path(root)
        self.proc: Optional[subprocess.Popen] = None
        self.conf_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.stderr_path = self.root / "dovecot.stderr"
        self._prepare()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    @property
    def imaps_address(self) -> str:
        """The implicit-TLS listener (only with tls={..., imaps: True})."""
        assert self.imaps_port, "dovecot %s has no imaps listener" % self.name
        return "127.0.0.1:%d" % self.imaps_port

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def _prepare(self) -> None:
        uid = pwd.getpwnam(MAIL_USER).pw_uid
        gid = grp.getgrnam(MAIL_GROUP).gr_gid
        self.root.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.root)
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        for sub in ("mail", "home"):
            d = self.root / sub
            d.mkdir(exist_ok=True)
            os.chown(d, uid, gid)
            os.chmod(d, 0o750)
        users_file = self.root / "users"
        users_file.write_text(
            "".join("%s:{PLAIN}%s::::::\n" % (u, self.password) for u in self.users)
            + "%s:{PLAIN}%s::::::\n" % (UTF8_USER, UTF8_PASSWORD),
            encoding="utf-8",
        )
        # Dovecot's auth process runs as the "dovecot" user and must read it.
        try:
            os.chown(users_file, 0, grp.getgrnam("dovecot").gr_gid)
            os.chmod(users_file, 0o640)
        except KeyError:
            os.chmod(users_file, 0o644)
        if self.tls is None:
            ssl_settings = "ssl = no"
        else:
            ssl_settings = "ssl = %s\nssl_cert = <%s\nssl_key = <%s" % (
                "required" if self.tls.get("required", True) else "yes", self.tls["cert"], self.tls["key"])
        if self.imaps_port:
            imaps_listener = "    address = 127.0.0.1\n    port = %d\n    ssl = yes" % self.imaps_port
        else:
            imaps_listener = "    port = 0"
        haproxy_settings = ""
        haproxy_listeners = ""
        if self.haproxy:
            haproxy_settings = (
                "haproxy_trusted_networks = 127.0.0.0/8\n"
                "login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} lip=%l "
                "lport=%{lport} real_rip=%{real_rip} real_rport=%{real_rport} mpid=%e %c "
                "session=<%{session}>")
            haproxy_listeners = ("  inet_listener imap_haproxy {\n    address = 127.0.0.1\n"
                                 "    port = %d\n    haproxy = yes\n  }\n" % self.haproxy_port)
            if self.haproxy_imaps_port:
                haproxy_listeners += ("  inet_listener imaps_haproxy {\n    address = 127.0.0.1\n"
                                      "    port = %d\n    ssl = yes\n    haproxy = yes\n  }\n"
                                      % self.haproxy_imaps_port)
        conf = string.Template(_DOVECOT_CONF).substitute(
            ssl_settings=ssl_settings,
            imaps_listener=imaps_listener,
            haproxy_settings=haproxy_settings,
            haproxy_listeners=haproxy_listeners,
            name=self.name,
            base_dir=self.root / "run",
            state_dir=self.root / "state",
            log_path=self.log_path,
            root=self.root,
            mail_uid=uid,
            mail_gid=gid,
            users_file=users_file,
            port=self.port,
        )
        self.conf_path.write_text(conf)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Dovecot":
        """Starts Dovecot and waits for an IMAP greeting on its port."""
        if self.running():
            return self
        self._reap_stale_master()
        # Something else answering on our port would pass the greeting check
        # below and silently stand in for this instance.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            pass
        else:
            raise RuntimeError("dovecot %s: port %d is already in use by another process" % (self.name, self.port))
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [DOVECOT_BIN, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=_raise_nofile,
            )
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2.0)
                    greeting = s.recv(4096)
                    if greeting.startswith(b"* OK"):
                        return self
                    last_error = "greeting %r" % greeting[:200]
            except OSError as e:
                last_error = str(e)
            # Waiting on the process doubles as the poll interval and notices
            # a Dovecot that gave up (bad config, port taken).
            try:
                rc = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(
                "dovecot %s exited with %s during start-up\n--- stderr\n%s\n--- log\n%s"
                % (self.name, rc, _tail(self.stderr_path), _tail(self.log_path))
            )
        self.kill()
        raise RuntimeError(
            "dovecot %s did not greet on port %d within %.0fs (%s)\n--- stderr\n%s\n--- log\n%s"
            % (self.name, self.port, timeout, last_error, _tail(self.stderr_path), _tail(self.log_path))
        )

    def _reap_stale_master(self) -> None:
        # A master we started earlier (for instance a demo run that was
        # SIGKILLed) leaves its pid in base_dir. End it only if its command
        # line is ours, i.e. it is surely the process we started.
        pid_file = self.root / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path("/proc/%d/cmdline" % pid).read_bytes()
        except (OSError, ValueError):
            return
        if str(self.conf_path).encode() not in cmdline:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_until(lambda: not Path("/proc/%d" % pid).exists(), 5.0)

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM, wait up to timeout, then SIGKILL the whole group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        rc = self.proc.wait(timeout=5)
        return rc

    def kill(self) -> None:
        """SIGKILL the master and all its children (the process group)."""
        if self.proc is None:
            return
        self._kill_group()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # The group leader may be gone while children linger a moment.
        wait_until(lambda: not self.group_pids(), 5.0, 0.02)

    def group_pids(self) -> list:
        """Live (non-zombie) pids in this instance's process group."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc/%s/stat" % entry).read_text()
            except OSError:
                continue
            # Fields after the command name, which is in parentheses.
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(entry))
        return pids

    def cleanup(self) -> None:
        """Kills the server (no grace needed) and removes its temp dir if the
        harness made it."""
        self.kill()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- mail inspection --------------------------------------------------

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        base = self.root / "mail" / user
        return base if folder.upper() == "INBOX" else base / ("." + folder)

    def messages(self, user: str, folder: str = "INBOX") -> list:
        """Paths of the message files in a user's maildir folder (new/ and cur/)."""
        d = self.maildir(user, folder)
        out = []
        for sub in ("new", "cur"):
            try:
                out.extend(sorted((d / sub).iterdir()))
            except FileNotFoundError:
                pass
        return out

    def messages_with(self, user: str, marker: Union[str, bytes], folder: str = "INBOX") -> list:
        """Message files in a user's folder whose bytes contain marker."""
        m = marker.encode() if isinstance(marker, str) else marker
        found = []
        for p in self.messages(user, folder):
            try:
                if m in p.read_bytes():
                    found.append(p)
            except FileNotFoundError:  # moved new/ -> cur/ meanwhile
                pass
        return found

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return "Dovecot(%s @ %s)" % (self.name, self.address)


# --------------------------------------------------------------------------
# TOML writing (tomllib only reads)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join("%s = %s" % (_toml_key(k), _toml_value(x)) for k, x in v.items()) + " }"
    raise TypeError("cannot write %r as TOML" % (v,))


def to_toml(cfg: dict) -> str:
    """Writes nested dicts as TOML: scalars, [tables], [[arrays of tables]]."""
    out: list = []

    def is_table_array(v) -> bool:
        return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)

    def emit(prefix: list, table: dict) -> None:
        for k, v in table.items():
            if not isinstance(v, dict) and not is_table_array(v):
                out.append("%s = %s" % (_toml_key(k), _toml_value(v)))
        for k, v in table.items():
            name = prefix + [_toml_key(k)]
            if isinstance(v, dict):
                out.append("")
                out.append("[%s]" % ".".join(name))
                emit(name, v)
            elif is_table_array(v):
                for item in v:
                    out.append("")
                    out.append("[[%s]]" % ".".join(name))
                    emit(name, item)

    emit([], cfg)
    return "\n".join(out).lstrip("\n") + "\n"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------
# Portico


class PorticoError(AssertionError):
    pass


class Portico:
    """A Portico process in front of some backends (see module doc).

    config: None (the test default built from backends), a dict (merged
    over the default) or a template string (string.Template, placeholders
    $listen_port $status_port $admin_socket $log_dir $workdir and
    $<backend name>_port / $<backend name>_address).
    """

    READY = "ready:"

    def __init__(
        self,
        backends: Iterable[Dovecot] = (),
        config: Union[None, dict, str] = None,
        workdir: Optional[Union[str, Path]] = None,
        listen_port: Optional[int] = None,
        status_port: Optional[int] = None,
        binary: Optional[str] = None,
        config_path: Optional[Union[str, Path]] = None,
        cwd: Optional[Union[str, Path]] = None,
        preexec: Optional[Callable[[], None]] = None,
    ):
        """preexec: runs in the child before exec, after the fd limit is
        raised (for instance to set another resource limit)."""
        self.backends = list(backends)
        self.cwd = cwd
        self.preexec = preexec
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="portico-proxy-")
            self._owns_workdir = True
        else:
            self._owns_workdir = False
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = listen_port or free_port()
        self.status_port = status_port or free_port()
        self.binary = binary or portico_bin()
        self.config_path = Path(config_path) if config_path else self.workdir / "portico.toml"
        self._external_config = config_path is not None and config is None
        self.log_path = self.workdir / "portico.stderr.log"
        self.proc: Optional[subprocess.Popen] = None
        self._lines: list = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: Optional[threading.Thread] = None
        self.config: Union[dict, str, None] = config

    # -- config ------------------------------------------------------------

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "admin.sock"

    def default_config(self) -> dict:
        return {
            "workers": 2,
            "listen": [{"address": "127.0.0.1:%d" % self.port}],
            "backend": [
                {
                    "name": b.name,
                    "address": b.address,
                    "weight": 1,
                    "forward_id": False,
                    "proxy_protocol": False,
                }
                for b in self.backends
            ],
            "routing": {"map_file": "", "connect_retries": 2},
            "timeouts": {
                "prelogin": "60s",
                "idle": "30m",
                "backend_connect": "5s",
                "backend_login": "30s",
                "shutdown": "5s",
            },
            "limits": {
                "max_connections": 10000,
                "max_connections_per_ip": 1000,
                "max_bad_commands": 10,
                "max_login_failures": 5,
                "login_failure_delay": "100ms",
                "prelogin_max_line": 8192,
                "prelogin_max_literal": 8192,
                "max_line": 65536,
                "write_high_watermark": 262144,
            },
            "status": {"listen": "127.0.0.1:%d" % self.status_port},
            "admin": {"socket": str(self.admin_socket)},
            "protocol_log": {"enabled": False, "directory": str(self.workdir / "log")},
        }

    def render_config(self) -> str:
        if isinstance(self.config, str):
            subst = {
                "listen_port": self.port,
                "status_port": self.status_port,
                "admin_socket": str(self.admin_socket),
                "log_dir": str(self.workdir / "log"),
                "workdir": str(self.workdir),
            }
            for b in self.backends:
                subst["%s_port" % b.name] = b.port
                subst["%s_address" % b.name] = b.address
            return string.Template(self.config).substitute(subst)
        cfg = self.default_config()
        if self.config:
            cfg = deep_merge(cfg, self.config)
        return to_toml(cfg)

    def write_config(self) -> None:
        if self._external_config:
            return
        (self.workdir / "log").mkdir(exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.render_config())
        os.replace(tmp, self.config_path)

    # -- process -------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "portico not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> "Portico":
        if not os.access(self.binary, os.X_OK):
            raise PorticoError("Portico binary %s does not exist or is not executable "
                               "(set PORTICO_BIN or build it)" % self.binary)
        self.write_config()
        with self._cond:
            self._lines = []
            self._eof = False
        self._logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._logfile,
            stderr=subprocess.PIPE,
            preexec_fn=self._preexec,
            cwd=self.cwd,
            env=sanitizer_env(),
        )
        self._reader = threading.Thread(target=self._read_stderr, name="portico-stderr", daemon=True)
        self._reader.start()
        try:
            self.wait_for_line(self.READY, timeout=timeout)
        except PorticoError:
            self.kill()
            raise
        return self

    def _preexec(self) -> None:
        _raise_nofile()
        if self.preexec is not None:
            self.preexec()

    def sanitizer_report(self) -> Optional[str]:
        """The first sanitizer report on this Portico's stderr, or None."""
        return sanitizer_report(self.log_text())

    def _read_stderr(self) -> None:
        fd = self.proc.stderr.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk:
                self._logfile.write(chunk)
                self._logfile.flush()
                parts = (pending + chunk).split(b"\n")
                pending = parts.pop()
                if parts:
                    with self._cond:
                        self._lines.extend(p.decode("utf-8", "replace").rstrip("\r") for p in parts)
                        self._cond.notify_all()
                continue
            with self._cond:
                if pending:
                    self._lines.append(pending.decode("utf-8", "replace"))
                self._eof = True
                self._cond.notify_all()
            return

    def lines(self) -> list:
        with self._cond:
            return list(self._lines)

    def log_text(self) -> str:
        return "\n".join(self.lines())

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.lines()[-n:])

    def count_lines(self, needle: Union[str, "re.Pattern"]) -> int:
        return sum(1 for l in self.lines() if _matches(needle, l))

    def wait_for_line(
        self,
        needle: Union[str, "re.Pattern"],
        count: int = 1,
        timeout: float = 10.0,
        fail: Optional[Union[str, "re.Pattern"]] = None,
        since: int = 0,
    ) -> list:
        """Waits until `count` stderr lines (from index `since`) match needle.

        Raises PorticoError with the log tail on timeout, on a line matching
        `fail`, or when the process exits first. Returns the matching lines.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                window = self._lines[since:]
                hits = [l for l in window if _matches(needle, l)]
                if len(hits) >= count:
                    return hits
                if fail is not None:
                    bad = [l for l in window if _matches(fail, l)]
                    if bad:
                        raise PorticoError("portico logged %r while waiting for %r\n--- log tail\n%s"
                                           % (bad[0], needle, "\n".join(self._lines[-40:])))
                if self._eof:
                    rc = self.proc.wait(timeout=5) if self.proc else None
                    raise PorticoError(
                        "portico exited (rc=%s) before logging %d x %r\n--- log tail\n%s"
                        % (rc, count, needle, "\n".join(self._lines[-40:]))
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PorticoError(
                        "timed out after %.1fs waiting for %d x %r (have %d)\n--- log tail\n%s"
                        % (timeout, count, needle, len(hits), "\n".join(self._lines[-40:]))
                    )
                self._cond.wait(left)

    def session_end_lines(self, client_ports: Iterable[int]) -> dict:
        """port -> the `session end` lines naming client=127.0.0.1:<port>.

        Matching by the client's own port ignores sessions the test did not
        open (for instance health probes through Portico's listener)."""
        want = {int(p) for p in client_ports}
        out: dict = {p: [] for p in want}
        for line in self.lines():
            if "session end" not in line:
                continue
            m = re.search(r"client=(?:127\.0\.0\.1|\[?::1\]?|\[::ffff:127\.0\.0\.1\]):(\d+)\b", line)
            if m and int(m.group(1)) in want:
                out[int(m.group(1))].append(line)
        return out

    def wait_for_session_ends(self, client_ports: Iterable[int], timeout: float = 10.0) -> dict:
        """Waits until every listed client port has a `session end` line."""
        ports = list(client_ports)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ends = self.session_end_lines(ports)
                missing = [p for p, ls in ends.items() if not ls]
                if not missing:
                    return ends
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise PorticoError(
                        "%s: no `session end` line for %d of %d sessions (client ports %s)\n--- log tail\n%s"
                        % ("portico exited" if self._eof else "timed out after %.1fs" % timeout,
                           len(missing), len(ports), sorted(missing)[:10], "\n".join(self._lines[-40:])))
                self._cond.wait(left)

    def reload(self, config: Union[None, dict, str] = None, timeout: float = 10.0) -> None:
        """Rewrites the config (if given), sends SIGHUP, waits for `reload: done`."""
        if config is not None:
            self.config = config
        self.write_config()
        since = len(self.lines())
        os.kill(self.pid, signal.SIGHUP)
        self.wait_for_line("reload: done", timeout=timeout, fail=re.compile(r"reload: (failed|error)"), since=since)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM and wait; returns the exit code (SIGKILL + error on timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise PorticoError("portico did not exit within %.0fs of SIGTERM\n--- log tail\n%s"
                                   % (timeout, self.log_tail()))
        self._join_reader()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if getattr(self, "_logfile", None) is not None and self._reader is not None and not self._reader.is_alive():
            self._logfile.close()

    def cleanup(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            self.kill()
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def admin(self, command, timeout: float = 10.0) -> dict:
        """One admin socket command (a line or a list of words) -> its JSON reply."""
        return admin_request(self.admin_socket, command, timeout=timeout)

    def porticoctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """Runs porticoctl (PORTICOCTL_BIN) against this Portico's admin socket."""
        return subprocess.run([porticoctl_bin(), "--socket", str(self.admin_socket), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              env=sanitizer_env())

    def open_fds(self) -> int:
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def fd_targets(self) -> list:
        out = []
        for fd in os.listdir("/proc/%d/fd" % self.pid):
            try:
                out.append("%s -> %s" % (fd, os.readlink("/proc/%d/fd/%s" % (self.pid, fd))))
            except OSError:
                pass
        return sorted(out)

    def __repr__(self) -> str:
        return "Portico(%s pid=%s)" % (self.address, self.proc.pid if self.proc else None)


def _matches(needle, line: str) -> bool:
    if isinstance(needle, str):
        return needle in line
    return needle.search(line) is not None


# --------------------------------------------------------------------------
# Raw-socket IMAP client


def status_of(tagged: bytes) -> bytes:
    """The status word of a tagged reply (b"OK", b"NO", b"BAD"), or b""."""
    parts = tagged.split(b" ", 2)
    return parts[1] if len(parts) > 1 else b""


def logged_in(server, user: str, timeout: float = 10.0) -> "ImapConn":
    """A connection to `server` (a port, or anything with .port) logged in as
    `user` with the test password; fails the test when LOGIN is not OK."""
    port = server if isinstance(server, int) else server.port
    c = ImapConn(port, timeout=timeout)
    tagged = c.login(user)
    assert status_of(tagged) == b"OK", "LOGIN %s via port %d: %r" % (user, port, tagged)
    return c


class ImapConn:
    """A minimal line-oriented IMAP client over a plain socket.

    Every read has a timeout (socket.timeout is raised), so a test never
    hangs on a silent server.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, read_greeting: bool = True,
                 source: Optional[str] = None):
        # source: connect from this local address (any of 127.0.0.0/8), e.g.
        # a client behind a load balancer with an address of its own.
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.greeting = self.readline() if read_greeting else b""
        self._tagn = 0

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def next_tag(self) -> str:
        self._tagn += 1
        return "a%03d" % self._tagn

    def send(self, data: Union[bytes, str]) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def readline(self) -> bytes:
        """One CRLF-terminated line (with CRLF); raises EOFError on close."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 2], self.buf[i + 2 :]
                return line
            if not self._fill():
                raise EOFError("connection closed; partial %r" % self.buf[:200])

    def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed inside a %d-byte literal" % n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, tag: str) -> tuple:
        """Reads until the tagged line for `tag`; literals are read whole.

        Returns (tagged_line, [untagged/continuation lines with literals inline]).
        """
        lines = []
        prefix = (tag + " ").encode()
        while True:
            line = self.readline()
            m = re.search(rb"\{(\d+)\+?\}\r\n$", line)
            while m:
                line += self.readexactly(int(m.group(1)))
                more = self.readline()
                line += more
                m = re.search(rb"\{(\d+)\+?\}\r\n$", more)
            if line.startswith(prefix):
                return line, lines
            lines.append(line)

    def command(self, text: str, tag: Optional[str] = None) -> tuple:
        tag = tag or self.next_tag()
        self.send("%s %s\r\n" % (tag, text))
        return self.read_response(tag)

    def ok(self, text: str) -> list:
        tagged, untagged = self.command(text)
        status = tagged.split(b" ", 2)[1] if b" " in tagged else b""
        if status != b"OK":
            raise AssertionError("%s -> %r (untagged %r)" % (text, tagged, untagged[-5:]))
        return untagged

    def login(self, user: str, password: str = PASSWORD) -> bytes:
        tagged, _ = self.command("LOGIN %s %s" % (quote(user), quote(password)))
        return tagged

    def append(self, message: bytes, mailbox: str = "INBOX") -> bytes:
        """APPEND with a synchronizing literal; returns the tagged line."""
        tag = self.next_tag()
        self.send("%s APPEND %s {%d}\r\n" % (tag, mailbox, len(message)))
        cont = self.readline()
        if not cont.startswith(b"+"):
            raise AssertionError("APPEND got %r instead of a continuation" % cont)
        self.send(message + b"\r\n")
        tagged, _ = self.read_response(tag)
        return tagged

    def read_until_closed(self, timeout: float = 3.0) -> tuple:
        """Reads everything until EOF/reset. Returns (bytes, how) with how in
        {'eof', 'reset', 'timeout'}."""
        self.sock.settimeout(timeout)
        data = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, "timeout"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return data, "timeout"
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Closes with RST (SO_LINGER 0), like a client that vanished."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DeflateConn(ImapConn):
    """ImapConn over an already connected socket (plain or TLS) that can
    switch to COMPRESS=DEFLATE. Counts the bytes on the wire both ways."""

    def __init__(self, sock, timeout=15.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self._tagn = 0
        self.wire_in = 0
        self.wire_out = 0
        self.inflater = None
        self.deflater = None
        self.greeting = self.readline()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.wire_out += len(data)
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.wire_in += len(chunk)
        if self.inflater is not None:
            chunk = self.inflater.decompress(chunk)
        self.buf += chunk
        return True

    def start_compression(self, tag="z1"):
        """COMPRESS DEFLATE; on OK both directions are compressed from the
        next byte. Returns the tagged line."""
        self.send("%s COMPRESS DEFLATE\r\n" % tag)
        line = self.readline()
        while not line.startswith(tag.encode() + b" "):
            line = self.readline()
        if line.startswith(tag.encode() + b" OK"):
            # Anything already read after the OK was compressed.
            rest, self.buf = self.buf, b""
            self.inflater = zlib.decompressobj(wbits=-15)
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.buf = self.inflater.decompress(rest)
        return line


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plain_b64(user: str, password: str = PASSWORD, authzid: str = "") -> str:
    return base64.b64encode(("%s\0%s\0%s" % (authzid, user, password)).encode()).decode()


def which_backend(backends: Iterable[Dovecot], user: str, marker: str) -> list:
    """Names of the backends whose maildir for user holds a message with marker."""
    return [b.name for b in backends if b.messages_with(user, marker)]


class LineReader:
    """Reads CRLF lines from a (TLS or plain) socket, every read bounded."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed; partial %r" % self.buf[:200])
            self.buf += chunk
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def until_tagged(self, tag: bytes) -> list:
        lines = []
        while True:
            line = self.readline()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: str, text: str) -> list:
        self.sock.sendall(("%s %s\r\n" % (tag, text)).encode())
        return self.until_tagged(tag.encode())
