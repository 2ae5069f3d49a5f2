"""Fixtures: real Dovecot backends and Portico processes, always torn down.

backends        module scope: Dovecot mbx1 and mbx2 (shared by a module's tests)
own_backends    function scope: a fresh mbx1/mbx2 pair for tests that stop or
                kill backends
dovecot_factory function scope: make(name) -> started Dovecot
portico         function scope: Portico in front of `backends`, test config
portico_factory function scope: make(backends, config=None, **kw) -> started Portico
"""

import pytest

from harness import PASSWORD, SANITIZER_MARKERS, USERS, Dovecot, Portico
from lookup_harness import RedisServer
from tls_certs import TestPki

__all__ = ["PASSWORD", "USERS", "Dovecot", "Portico", "SANITIZER_MARKERS"]  # for tests that import conftest


# The fixed subset CI runs against the ThreadSanitizer build (-m tsan):
# tests where two workers, the control loop (admin socket, probes,
# monitors, reload) and the protocol-log writer are busy at the same time.
# Listed here rather than decorated in each file, so the subset is read in
# one place; test_faults.py marks its own. A listed test that no longer
# exists fails the -m tsan run instead of silently shrinking the subset.
TSAN_SUBSET = (
    "test_protocol_log.py::test_switch_on_and_off_under_load",  # writer on/off under traffic
    "test_protocol_log.py::test_trace_one_user_until_ttl",  # control-loop TTL timer vs workers
    "test_admin.py::test_sessions_and_kick",  # admin gathers from both workers
    "test_admin.py::test_stats_counts_commands",  # control reads worker counters
    "test_admin.py::test_drain_move_sessions_waits_for_a_running_append",  # control -> workers
    "test_admin.py::test_reload_valid_and_broken",  # reload over the admin socket
    "test_health.py::test_stalled_backend_trips_requests_queued",  # monitors sample counters
    "test_health.py::test_stopped_backend_is_drained_and_restored",  # probes, responder drains
    "test_proxy_core.py::test_sighup_reload_keeps_sessions_and_routes_new_ones",  # SIGHUP reload
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tsan: part of the fixed subset CI runs against the ThreadSanitizer build "
        "(workers, control loop and protocol-log writer busy together)")


def pytest_collection_modifyitems(config, items):
    wanted = set(TSAN_SUBSET)
    for item in items:
        name = "%s::%s" % (item.path.name, item.name)
        if name in wanted:
            item.add_marker(pytest.mark.tsan)
            wanted.discard(name)
    markexpr = config.getoption("-m") or ""
    if "tsan" in markexpr and wanted and not config.getoption("-k"):
        raise pytest.UsageError("TSAN_SUBSET names tests that were not collected: %s" % sorted(wanted))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def _start_pair():
    pair = []
    try:
        for name in ("mbx1", "mbx2"):
            d = Dovecot(name)
            pair.append(d)
            d.start()
    except BaseException:
        for d in pair:
            d.cleanup()
        raise
    return pair


@pytest.fixture(scope="module")
def backends():
    pair = _start_pair()
    try:
        yield pair
    finally:
        for d in pair:
            d.cleanup()


@pytest.fixture
def own_backends():
    pair = _start_pair()
    try:
        yield pair
    finally:
        for d in pair:
            d.cleanup()


@pytest.fixture
def dovecot_factory():
    made = []

    def make(name, **kw):
        d = Dovecot(name, **kw)
        made.append(d)
        return d.start()

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()


def _report_and_cleanup(request, made, check_alive):
    problems = []
    for p in made:
        if _failed(request):
            print("\n--- portico %s log tail (%s)\n%s" % (p.address, p.log_path, p.log_tail(60)))
        if check_alive and p.proc is not None and p.proc.poll() is not None:
            problems.append("portico %s died during the test (rc=%s)\n%s"
                            % (p.address, p.proc.returncode, p.log_tail(40)))
        try:
            p.cleanup()
        except AssertionError as e:  # e.g. no exit within 15 s of SIGTERM
            problems.append(str(e))
        # A sanitizer build (PORTICO_SANITIZE=ON, PORTICO_TSAN=ON) reports on
        # stderr (the harness sets ASAN/UBSAN/TSAN_OPTIONS); any report,
        # including LeakSanitizer's at exit, fails the test that provoked it.
        report = p.sanitizer_report()
        if report is not None:
            problems.append("portico %s stderr has a sanitizer report:\n%s" % (p.address, report))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def portico_factory(request):
    made = []

    def make(backends, config=None, start=True, **kw):
        p = Portico(backends, config=config, **kw)
        made.append(p)
        return p.start() if start else p

    try:
        yield make
    finally:
        _report_and_cleanup(request, made, check_alive=False)


@pytest.fixture
def portico(request, backends):
    p = Portico(backends)
    try:
        p.start()
        yield p
    finally:
        _report_and_cleanup(request, [p], check_alive=True)


@pytest.fixture(scope="module")
def pki():
    """A test CA with server and client certificates (openssl CLI), per module."""
    p = TestPki.create()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="module")
def redis():
    """A real redis-server on a loopback port, per module (lookup tests)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()
