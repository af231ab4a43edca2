import pytest

from whatsup.testing import ServerProcess


@pytest.fixture
def make_server(tmp_path):
    """Start real whatsupd subprocesses; every one is killed when the test ends."""
    started = []

    def make(settings=None, name="node", **kw):
        srv = ServerProcess(tmp_path / name, settings, **kw)
        (tmp_path / name).mkdir(exist_ok=True)
        started.append(srv)
        return srv.start()
    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def server(make_server):
    return make_server()
