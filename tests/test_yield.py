"""A long job done in slices lets the hub poll I/O between them (runtime.process.let_others_run),
which ``gevent.sleep(0)`` alone does not: counted in slices, not timed."""
import socket

import gevent
import gevent.socket
import pytest

from whatsup.runtime import let_others_run


def slices_until_read(pause, limit=200):
    """How many slices a job yielding with ``pause`` runs before a greenlet whose byte is
    already waiting on its socket gets it (``limit`` when it never did meanwhile)."""
    a, b = socket.socketpair()
    a, b = gevent.socket.socket(fileno=a.detach()), gevent.socket.socket(fileno=b.detach())
    got = []
    reader = gevent.spawn(lambda: got.append(b.recv(1)))
    gevent.sleep(0.01)  # the reader waits on its socket
    a.sendall(b"x")
    n = 0
    while not got and n < limit:
        sum(range(200))  # a slice of work
        n += 1
        pause()
    reader.kill()
    a.close()
    b.close()
    return n


@pytest.mark.timeout(30)
def test_a_sliced_job_lets_a_ready_socket_be_read_within_a_couple_of_slices():
    assert slices_until_read(let_others_run) <= 3


@pytest.mark.timeout(30)
def test_sleep_zero_alone_runs_dozens_of_slices_before_the_hub_polls_io():
    """Why let_others_run exists: the hub polls I/O only every 50 callbacks."""
    assert slices_until_read(lambda: gevent.sleep(0)) >= 40
