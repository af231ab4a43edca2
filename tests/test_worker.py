"""store.worker.Worker: the native thread behind each offd shard's writes."""
import threading

import gevent
import pytest

from whatsup.store.worker import Worker


def test_tasks_run_in_order_on_one_native_thread_and_apply_returns_or_raises():
    w = Worker("test")
    ran = []
    for i in range(200):
        w.spawn(lambda i=i: ran.append((i, threading.get_ident())))
    assert w.apply(lambda a, b: a + b, (2, 3)) == 5
    assert [i for i, _ in ran] == list(range(200))
    assert len({t for _, t in ran}) == 1 and ran[0][1] != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        w.apply(lambda: 1 / 0)
    w.kill()


def test_many_greenlets_applying_at_once_each_get_their_own_answer():
    w = Worker("test")
    jobs = [gevent.spawn(w.apply, lambda n=n: n * n) for n in range(100)]
    gevent.joinall(jobs, timeout=10)
    assert [j.value for j in jobs] == [n * n for n in range(100)]
    w.kill()


def test_kill_runs_what_was_handed_over_then_ends_the_thread():
    w = Worker("test")
    ran = []
    w.spawn(ran.append, 1)
    w.kill()
    assert w.ended.wait(5) and ran == [1]
