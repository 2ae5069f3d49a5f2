#!/usr/bin/python3
"""Portico demo: two real Dovecot backends, Portico in front, one client session.

    /usr/bin/python3 scripts/demo.py          # runs until Ctrl-C
    /usr/bin/python3 scripts/demo.py --once   # exits after the client session (CI)
    /usr/bin/python3 scripts/demo.py --lookup http   # routes through an auth_http service
    /usr/bin/python3 scripts/demo.py --fleet  # three nodes behind HAProxy, sharing state in Redis

With --fleet the demo runs the fleet topology of scripts/demo_fleet.py
instead of the single Portico: redis-server, three Portico nodes with PROXY
protocol listeners and real HAProxy in front on 127.0.0.1:10143; it shows a
drain and a user hold reaching every node and prints the fleet view.

With --lookup http the demo also starts a small nginx-style auth service
(tests/integration/auth_service.py) on 127.0.0.1:10190 that routes alice
and carol to mbx2 and bob to mbx1, and Portico asks it at every login
([lookup] kind = "http"); the demo prints the requests it received
(Auth-Pass masked).

Backends: mbx1 on 127.0.0.1:10144, mbx2 on 127.0.0.1:10145 (maildirs in
<repo>/.run/demo). Portico: conf/demo.toml (listener 127.0.0.1:10143, status
127.0.0.1:18080); without that file the demo writes an equivalent config.
Everything started here is stopped on exit, Ctrl-C or SIGTERM.
"""

import argparse
import imaplib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import PASSWORD, Dovecot, Portico, make_message, portico_bin  # noqa: E402

DEMO_USERS = ["alice", "bob", "carol"]
PROBE_USERS = {"mbx1": "healthmailbox-mbx1", "mbx2": "healthmailbox-mbx2"}
LISTEN_PORT = 10143
BACKEND_PORTS = {"mbx1": 10144, "mbx2": 10145}
STATUS_PORT = 18080
RUN_DIR = REPO / ".run" / "demo"
DEMO_CONF = REPO / "conf" / "demo.toml"
AUTH_PORT = 10190


class Stop(Exception):
    pass


def on_signal(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def step(text):
    print("  -> %s" % text, flush=True)


def client_session(port: int) -> bool:
    print("\nClient session through Portico (imaplib, 127.0.0.1:%d):" % port, flush=True)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    step("greeting: %s" % m.welcome.decode(errors="replace"))
    typ, data = m.login("alice", PASSWORD)
    step("LOGIN alice: %s %s" % (typ, data[0].decode(errors="replace")))
    typ, data = m.select("INBOX")
    step("SELECT INBOX: %s, %s messages" % (typ, data[0].decode()))
    subject = "Portico demo %s" % time.strftime("%Y-%m-%d %H:%M:%S")
    msg = make_message(subject, marker="demo-%d" % int(time.time()))
    typ, data = m.append("INBOX", None, None, msg)
    step("APPEND (%d bytes): %s %s" % (len(msg), typ, data[0].decode(errors="replace")))
    typ, data = m.select("INBOX")
    count = int(data[0])
    typ, data = m.fetch(str(count), "(BODY.PEEK[])")
    fetched = data[0][1] if typ == "OK" and isinstance(data[0], tuple) else b""
    same = fetched == msg
    step("FETCH %d BODY.PEEK[]: %s, %d bytes, %s" % (count, typ, len(fetched),
                                                    "identical to what was appended" if same else "DIFFERENT"))
    typ, data = m.logout()
    step("LOGOUT: %s %s" % (typ, data[0].decode(errors="replace")))
    return same


def show_health(base: str, wait_s: float = 20.0) -> None:
    """Prints the monitors from /health once every probe has run (bounded)."""
    url = base + "/health"
    deadline = time.monotonic() + wait_s
    monitors = []
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                monitors = json.loads(r.read().decode())
        except (OSError, urllib.error.URLError, ValueError) as e:
            print("\nStatus endpoint %s did not answer: %s" % (url, e))
            return
        if isinstance(monitors, dict):
            monitors = monitors.get("Monitors", [])
        pending = [m for m in monitors if not m.get("LastExecutionTime")]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the probes run on their own schedule; poll, bounded
    print("\nHealth (%s):" % url)
    print("  %-44s %-8s %-14s %s" % ("Name", "Target", "HealthSet", "AlertValue"))
    for m in monitors:
        print("  %-44s %-8s %-14s %s" % (m.get("Name"), m.get("TargetResource") or "-",
                                         m.get("HealthSetName"), m.get("AlertValue")))
    for path in ("/health/report", "/readyz", "/backends", "/metrics"):
        print("  also: %s%s" % (base, path))


def finish(ok: bool, once: bool, portico: Portico) -> int:
    """The demo's end: its verdict, or run until a signal (Stop) or until
    Portico exits on its own."""
    if not ok:
        print("demo: the fetched message differs from the appended one", file=sys.stderr)
        return 1
    if once:
        return 0
    print("Press Ctrl-C to stop.", flush=True)
    while True:
        try:
            portico.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue
        print("demo: Portico exited with %s\n%s" % (portico.proc.returncode, portico.log_tail()),
              file=sys.stderr)
        return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--once", action="store_true", help="exit after the client session")
    ap.add_argument("--lookup", choices=["none", "http"], default="none",
                    help="http: route each login through a small auth_http service")
    ap.add_argument("--fleet", action="store_true",
                    help="three Portico nodes behind HAProxy, sharing state through Redis")
    args = ap.parse_args()
    if args.fleet and args.lookup != "none":
        ap.error("--fleet and --lookup are separate demos")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "portico" / "portico.stderr.log").unlink(missing_ok=True)  # this run's log only

    started = []
    rc = 1
    try:
        backends = []
        for name, port in BACKEND_PORTS.items():
            d = Dovecot(name, users=DEMO_USERS + sorted(PROBE_USERS.values()), port=port,
                        root=RUN_DIR / name)
            started.append(d)
            d.start()
            backends.append(d)
            print("Dovecot %s listening on %s (maildirs %s, log %s)" % (name, d.address, d.root / "mail", d.log_path))

        # The login probes' password files (conf/demo.toml names them).
        for name in BACKEND_PORTS:
            secret = REPO / ".run" / ("probe-%s.pass" % name)
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(PASSWORD + "\n")
            secret.chmod(0o600)

        auth = None
        if args.fleet:
            import demo_fleet  # scripts/, next to this file

            nodes, front = demo_fleet.start(backends, RUN_DIR, REPO, started)
            ok = client_session(front)
            ok = demo_fleet.show(nodes, front, PASSWORD) and ok
            show_health("http://127.0.0.1:%d" % nodes[0].status_port)
            return finish(ok, args.once, nodes[0])
        if args.lookup == "http":
            from auth_service import AuthService  # tests/integration, on sys.path

            def to(backend):
                host, port = backend.address.rsplit(":", 1)
                return {"status": "OK", "server": host, "port": int(port)}

            auth = AuthService({"alice": to(backends[1]), "carol": to(backends[1]),
                                "bob": to(backends[0])}, port=AUTH_PORT).start()
            started.append(auth)
            print("Auth service (nginx auth_http style) on %s" % auth.url)
            portico = Portico(backends, workdir=RUN_DIR / "portico", listen_port=LISTEN_PORT,
                              status_port=STATUS_PORT, cwd=REPO,
                              config={"lookup": {"kind": "http", "url": auth.url, "timeout": "5s",
                                                 "cache_ttl": "60s"}})
            conf_note = "%s (written by the demo: [lookup] kind = \"http\")" % portico.config_path
        elif DEMO_CONF.exists():
            portico = Portico(backends, workdir=RUN_DIR / "portico", listen_port=LISTEN_PORT,
                              status_port=STATUS_PORT, config_path=DEMO_CONF, cwd=REPO)
            conf_note = str(DEMO_CONF)
        else:
            portico = Portico(backends, workdir=RUN_DIR / "portico", listen_port=LISTEN_PORT,
                              status_port=STATUS_PORT, cwd=REPO)
            conf_note = "%s (written by the demo; conf/demo.toml not found)" % portico.config_path
        started.append(portico)
        print("Starting Portico %s --config %s" % (portico_bin(), conf_note), flush=True)
        portico.start()
        print("Portico ready on 127.0.0.1:%d (pid %d, log %s)" % (LISTEN_PORT, portico.pid, portico.log_path))

        ok = client_session(LISTEN_PORT)
        for d in backends:
            held = len(d.messages("alice"))
            if held:
                print("  alice's mail is on %s: %d message(s) in %s" % (d.name, held, d.maildir("alice")))
        if auth is not None:
            print("\nThe auth service was asked (Auth-Pass masked here):")
            for r in auth.records:
                shown = ["%s: %s" % (n, "<masked>" if n.lower() == "auth-pass" else v)
                         for n, v in r["headers"]]
                step("%s | %s" % (r["request_line"], "; ".join(shown)))
        show_health("http://127.0.0.1:%d" % STATUS_PORT)

        print("""
Connect yourself:  127.0.0.1:%(port)d   users %(users)s   password %(pw)s
  The demo listener is plain IMAP (no TLS, so no openssl s_client); try:
    curl -u alice:%(pw)s imap://127.0.0.1:%(port)d/                  (list mailboxes)
    curl -u alice:%(pw)s 'imap://127.0.0.1:%(port)d/INBOX;UID=1'     (fetch message 1)
    /usr/bin/python3 -c "import imaplib; m=imaplib.IMAP4('127.0.0.1', %(port)d); print(m.login('bob', '%(pw)s')); print(m.select('INBOX')); m.logout()"
    nc -C 127.0.0.1 %(port)d   (if installed; type: a LOGIN alice %(pw)s, b SELECT INBOX, c LOGOUT)
  Status page (open in a browser): http://127.0.0.1:%(status)d/
  Status: http://127.0.0.1:%(status)d/health   (also /health/report, /backends, /commands, /metrics, /readyz)
  Admin:  build/proxy/porticoctl --socket .run/admin.sock sessions
          build/proxy/porticoctl --socket .run/admin.sock protocol-log on --user alice --ttl 5m
          build/proxy/porticoctl --socket .run/admin.sock backend drain mbx1 --move-sessions
""" % {"port": LISTEN_PORT, "users": ", ".join(DEMO_USERS), "pw": PASSWORD, "status": STATUS_PORT})

        return finish(ok, args.once, portico)
    except Stop as s:
        print("\ndemo: %s received, stopping" % s, flush=True)
        rc = 0
    except Exception as e:  # noqa: BLE001 - report and clean up
        print("demo: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for thing in reversed(started):
            try:
                if isinstance(thing, Dovecot) or not hasattr(thing, "cleanup"):
                    thing.stop()
                else:
                    thing.cleanup()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print("demo: stopping %r: %s" % (thing, e), file=sys.stderr)
        print("demo: stopped everything it started", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
