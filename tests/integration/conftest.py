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

__all__ = ["PASSWORD", "USERS", "Dovecot", "Portico", "SANITIZER_MARKERS"]  # for tests that import conftest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tsan: part of the fixed subset CI runs against the ThreadSanitizer build "
        "(workers, control loop and protocol-log writer busy together)")


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
