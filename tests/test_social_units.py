"""The I/O-free parts of groups and presence, with a fake clock and fake callbacks."""
from whatsup.groups import AllDurable
from whatsup.presence import RateLimit


def test_typing_rate_limit_allows_the_limit_per_window_then_refuses_until_the_next():
    limit = RateLimit(3, per=1.0)
    assert [limit.allow(t) for t in (0.0, 0.1, 0.2, 0.3, 0.9)] == [True, True, True, False, False]
    assert [limit.allow(t) for t in (1.0, 1.5, 1.6, 1.7)] == [True, True, True, False]


def test_all_durable_fires_once_after_every_expected_callback_and_the_issuer_release():
    fired = []
    done = AllDurable(fired.append)
    callbacks = [done.expect() for _ in range(3)]
    callbacks[0](None)
    callbacks[1](OSError("disk full"))
    callbacks[2](None)
    assert fired == []  # the issuer still holds it: more puts may follow
    done.release()
    assert len(fired) == 1 and isinstance(fired[0], OSError)


def test_all_durable_with_nothing_expected_fires_on_release():
    fired = []
    AllDurable(fired.append).release()
    assert fired == [None]
