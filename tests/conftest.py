import ast
import pathlib
import re

import gevent
import pytest

from whatsup.testing import LocalCluster, RedisServer, ServerProcess


#: Every password the suite uses starts with "pw-" (``f"pw-{user}"``, the attack's, the crash tests').
PASSWORD = re.compile(rb"pw-[\w.-]{2,}")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """For README's ``-n 2 --dist loadgroup --no-loadscope-reorder``: the tests marked slow run
    first (the order is otherwise kept), each worker taking the next test when it is done, so
    the long ones spread over both workers and the suite does not end waiting on one that came
    last; and the tests of a module that share a module-scoped fixture (a node, a cluster)
    run on one worker in file order (some rely on it), so it is started once, not once per worker."""
    unit = {}  # what runs on one worker: a module whose tests share a fixture, or a test alone
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs.values()
        if any(d.scope == "module" for fixturedefs in defs for d in fixturedefs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            unit[item] = item.module.__name__
        else:
            unit[item] = item.nodeid
    slow = {unit[item] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: unit[item] not in slow)  # a unit moves whole: its file order holds


@pytest.fixture(autouse=True)
def fresh_loop_time():
    """This process's hub keeps the time of its loop's last turn, and starting a timer does not
    update it: after tests that never ran the hub (subprocess nodes, seconds), a test's
    ``joinall(timeout=10)`` ended at once. Each test starts with the loop's time brought up to date."""
    gevent.get_hub().loop.update_now()


@pytest.fixture(scope="session", autouse=True)
def no_password_in_any_log(tmp_path_factory):
    """When the suite ends, no log a node or tool wrote under the suite's temporary dirs holds
    a password (docs/RELIABILITY.md, "Secrets in the log")."""
    yield
    found = {}
    for log in pathlib.Path(tmp_path_factory.getbasetemp()).rglob("*.log"):
        if log.is_file():
            hits = set(PASSWORD.findall(log.read_bytes()))
            if hits:
                found[str(log)] = sorted(hits)[:5]
    assert not found, f"passwords in logs: {found}"


@pytest.fixture
def make_server(tmp_path):
    """Start real whatsupd subprocesses; every one is killed when the test ends, and the test
    fails if gevent's monitor thread reported the hub blocked in any of them."""
    started = []

    def make(settings=None, name="node", **kw):
        srv = ServerProcess(tmp_path / name, settings, **kw)
        (tmp_path / name).mkdir(exist_ok=True)
        started.append(srv)
        return srv.start()
    yield make
    for srv in started:
        srv.kill()
    blocked = [report for srv in started for report in srv.blocking_reports()]
    assert not blocked, "the hub was blocked:\n" + "\n".join(blocked)


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture
def ask():
    """``ask(shell, expr)``: evaluate ``expr`` in the node's shell and return its (literal) value."""
    def ask(shell, source):
        out, ok = shell.run(source)
        assert ok, out
        return ast.literal_eval(out.strip()) if out.strip() else None
    return ask


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server of this test's own, on a free loopback port; killed when the test ends."""
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.kill()


@pytest.fixture
def make_cluster(tmp_path, make_server, redis_server):
    """``make_cluster(names=..., settings=...)``: real nodes joined through this test's redis-server
    (started through make_server: killed at the end, and the hub-blocked gate covers them)."""
    def make(names=("a@localhost", "b@localhost", "c@localhost"), settings=None, shards=12):
        return LocalCluster(tmp_path / "cluster", redis_server, names, shards, settings, make_server).start()
    return make
