"""The token buckets as pure objects with a fake clock: no sockets, no sleeping."""
from whatsup.runtime.ratelimit import KeyedLimiter, FrameBuckets, TokenBucket
from whatsup.testing import FakeClock


def test_a_full_bucket_allows_its_burst_then_refuses():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_tokens_come_back_at_the_rate_and_never_beyond_capacity():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=5, clock=clock)
    while bucket.take():
        pass
    clock.now += 1.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 3600
    assert bucket.full() and bucket.available() == 5


def test_a_refused_take_spends_nothing():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, capacity=3, clock=clock)
    assert bucket.take(2)
    assert not bucket.take(2)
    assert bucket.take(1)


def test_a_clock_going_backwards_gives_no_tokens():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, capacity=1, clock=clock)
    assert bucket.take()
    clock.now -= 50
    assert not bucket.take()


def test_rate_zero_means_unlimited_and_gets_no_bucket():
    clock = FakeClock()
    assert all(TokenBucket(0, 0, clock).take() for _ in range(10_000))
    buckets = FrameBuckets({"msg": 10.0, "typing": 0.0}, burst_seconds=3.0, clock=clock)
    assert buckets.buckets is None  # nothing made before the first frame
    assert buckets.get("msg").capacity == 30 and buckets.get("msg") is buckets.get("msg")
    assert buckets.get("typing") is None and buckets.get("ping") is None


def test_keyed_limiter_counts_failures_per_key_and_forgets_refilled_keys():
    clock = FakeClock()
    limiter = KeyedLimiter(count=3, window=60.0, clock=clock)
    for _ in range(3):
        assert limiter.allowed("mallory")
        limiter.charge("mallory")
    assert not limiter.allowed("mallory")
    assert limiter.allowed("alice")          # other keys are untouched
    clock.now += 20.0                        # one failure's worth refilled (3 per 60 s)
    assert limiter.allowed("mallory")
    limiter.prune()
    assert "mallory" in limiter.buckets
    clock.now += 60.0
    limiter.prune()
    assert limiter.buckets == {}


def test_keyed_limiter_with_count_zero_never_refuses():
    limiter = KeyedLimiter(count=0, window=60.0, clock=FakeClock())
    for _ in range(100):
        limiter.charge("x")
    assert limiter.allowed("x")


def test_keyed_limiter_refund_gives_a_charge_back_but_never_beyond_the_count():
    clock = FakeClock()
    limiter = KeyedLimiter(count=2, window=60.0, clock=clock)
    limiter.charge("u"), limiter.charge("u")      # two attempts in flight at once
    assert not limiter.allowed("u")              # a third must wait for one of them
    limiter.refund("u")                          # one of them was the right password
    assert limiter.allowed("u")
    limiter.refund("u"), limiter.refund("u"), limiter.refund("never-charged")
    assert limiter.buckets["u"].available() == 2 and "never-charged" not in limiter.buckets


def test_a_pacer_lets_a_burst_through_then_makes_the_caller_wait_in_proportion_to_its_work():
    from whatsup.runtime.ratelimit import Pacer
    from whatsup.testing import FakeClock
    clock = FakeClock()
    pace = Pacer(1000, 2.0, clock)  # 1,000 units/s after 2 s worth (2,000 units) at once
    assert pace.delay("ann", 1500) == 0.0 and pace.delay("ann", 500) == 0.0
    assert pace.delay("ann", 1000) == 1.0           # one second's worth past the burst
    assert pace.delay("bob", 1000) == 0.0           # per key
    clock.now += 3.0                                  # ann's backlog is worked off
    pace.prune()
    assert "ann" not in pace.due and pace.delay("ann", 2000) == 0.0
    assert Pacer(0, 1.0, clock).delay("ann", 10 ** 9) == 0.0  # rate 0: no limit


def test_failed_password_checks_lock_a_user_name_from_everywhere_and_no_other_name():
    from whatsup.runtime.ratelimit import Guesses
    clock = FakeClock()
    guesses = Guesses({"user": KeyedLimiter(3, 60.0, clock), "ip": KeyedLimiter(100, 60.0, clock)})

    def keys(user, ip):
        return (("user", user), ("ip", ip))
    assert [guesses.attempt(keys("victim", "10.0.0.1"), lambda: False) for _ in range(3)] == [False] * 3
    assert guesses.attempt(keys("victim", "10.0.0.2"), lambda: True) is None  # not checked, even right
    assert guesses.attempt(keys("other", "10.0.0.1"), lambda: True) is True
    clock.now += 20.0  # one failure's worth forgiven (3 per 60 s)
    assert guesses.attempt(keys("victim", "10.0.0.1"), lambda: True) is True
    assert guesses.attempt(keys("victim", "10.0.0.1"), lambda: True) is True  # a success is no guess


def test_password_checks_in_flight_count_against_the_limit_before_they_answer():
    from whatsup.runtime.ratelimit import Guesses
    guesses = Guesses({"user": KeyedLimiter(2, 60.0, FakeClock())})
    keys, answers = (("user", "victim"),), []

    def check(depth):
        """A wrong guess that, while it is being checked, starts the next one."""
        if depth < 3:
            answers.append(guesses.attempt(keys, lambda: check(depth + 1)))
        return False
    check(0)
    assert answers == [None, False, False]  # innermost first: the third began with two in flight


def test_a_prune_drops_keys_in_the_order_of_their_last_charge():
    clock = FakeClock(now=0.0)
    limiter = KeyedLimiter(count=2, window=60.0, clock=clock)  # a charge refills in 30 s
    limiter.charge("early")
    clock.now = 30.0
    limiter.charge("late")     # full again at 60
    clock.now = 31.0
    limiter.charge("early")    # charged again: full at 61, and now the last charged
    clock.now = 60.5
    limiter.prune()
    assert list(limiter.buckets) == ["early"]
    clock.now = 61.0
    limiter.prune()
    assert not limiter.buckets


def test_a_pacer_forgets_keys_in_the_order_of_their_last_work():
    from whatsup.runtime.ratelimit import Pacer
    clock = FakeClock(now=0.0)
    pace = Pacer(10, 1.0, clock)
    pace.delay("a", 10), pace.delay("b", 20)  # a is done at 1 s, b at 2 s
    clock.now = 0.5
    pace.delay("a", 20)                       # a: now done at 3 s, behind b
    clock.now = 2.5
    pace.prune()
    assert list(pace.due) == ["a"]


def test_a_prune_looks_no_further_than_the_first_key_not_done():
    import collections
    from whatsup.runtime.ratelimit import _prune
    table = collections.OrderedDict([("a", 1), ("b", 2), ("c", 9), *((f"k{i}", 1) for i in range(10_000))])
    looked = []
    _prune(table, lambda v: looked.append(v) or v < 5)
    assert looked == [1, 2, 9] and next(iter(table)) == "c" and len(table) == 10_001
