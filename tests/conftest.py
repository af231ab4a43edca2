import ast

import pytest

from whatsup.testing import ServerProcess


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
