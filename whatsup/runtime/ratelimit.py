"""Rate limits: token buckets, pure and clock-injected (docs/PROTOCOL.md, "Limits").

Nothing here does I/O or reads the time by itself: the clock is a parameter,
so every rule is tested with a fake clock and no sockets, as Prosody tests its
own token bucket. The session holds one bucket per rated frame type (the
``ratelimit`` table of the config), plus a strike bucket that decides when
refusals have become persistent abuse; the node holds :class:`KeyedLimiter`
instances for failed logins per user and per IP.
"""
import collections
import time


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; ``take`` spends them.

    A full bucket lets a client burst ``capacity`` frames at once; after that it
    gets ``rate`` per second. ``rate == 0`` and ``capacity == 0`` means no limit.
    """
    __slots__ = ("rate", "capacity", "tokens", "stamp", "clock")

    def __init__(self, rate, capacity, clock=time.monotonic):
        self.rate, self.capacity, self.clock = float(rate), float(capacity), clock
        self.tokens = self.capacity
        self.stamp = clock()

    def __repr__(self):
        self._refill()
        return f"<TokenBucket {self.tokens:.1f}/{self.capacity:g} +{self.rate:g}/s>"

    @property
    def unlimited(self):
        return self.rate == 0 and self.capacity == 0

    def _refill(self):
        now = self.clock()
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n=1):
        """Spend ``n`` tokens if there are that many; False (and nothing spent) otherwise."""
        if self.unlimited:
            return True
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def give(self, n=1):
        """Put ``n`` tokens back (never beyond capacity): a charge that turned out undeserved."""
        if not self.unlimited:
            self._refill()
            self.tokens = min(self.capacity, self.tokens + n)

    def available(self):
        """Tokens there are now (infinite for an unlimited bucket)."""
        if self.unlimited:
            return float("inf")
        self._refill()
        return self.tokens

    def full(self):
        """True when the bucket has refilled completely (a limiter may then forget it)."""
        return self.available() >= self.capacity


class FrameBuckets:
    """A session's buckets, one per rated frame type, from ``{type: frames per second}``
    (0 = unlimited: no bucket). Each is made on its type's first frame: most sessions never
    send most types, and an idle one sends none; ``limits`` is shared by all sessions."""
    __slots__ = ("limits", "burst_seconds", "clock", "buckets")

    def __init__(self, limits, burst_seconds, clock=time.monotonic):
        self.limits, self.burst_seconds, self.clock = limits, burst_seconds, clock
        self.buckets = None

    def get(self, ftype):
        """The bucket of ``ftype``, or None when that type is not rated."""
        if self.buckets is None:
            self.buckets = {}
        try:
            return self.buckets[ftype]
        except KeyError:
            rate = self.limits.get(ftype, 0)
            bucket = self.buckets[ftype] = (TokenBucket(rate, rate * self.burst_seconds, self.clock)
                                            if rate > 0 else None)
            return bucket


class KeyedLimiter:
    """At most ``count`` charges per key within ``window`` seconds (refilled smoothly).

    Used for failed logins per user and per IP (``count == 0``: no limit).
    Buckets that refilled are dropped by :meth:`prune`, so the table holds only
    keys seen failing lately. The table is kept in the order of the last charge and a
    bucket is full at most ``window`` after it, so a prune stops at the first bucket
    still refilling: it costs what it drops, not what the table holds (one address per
    key of an attack can be millions of keys, and the sweeper prunes every second).
    """

    def __init__(self, count, window, clock=time.monotonic):
        self.count, self.window, self.clock = count, window, clock
        self.buckets = collections.OrderedDict()

    def __repr__(self):
        return f"<KeyedLimiter {self.count}/{self.window:g}s keys={len(self.buckets)}>"

    def allowed(self, key):
        """True while ``key`` has charges left (checking spends nothing)."""
        bucket = self.buckets.get(key)
        return bucket is None or bucket.available() >= 1

    def charge(self, key):
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.count / self.window, self.count, self.clock)
        else:
            self.buckets.move_to_end(key)  # the order of last charges
        bucket.take()

    def refund(self, key):
        """Give back one charge of ``key`` (the attempt succeeded after all)."""
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.give()

    def prune(self):
        _prune(self.buckets, TokenBucket.full)


def _prune(table, done):
    """Drop the entries of ``table`` (an OrderedDict, least lately touched first) while
    ``done(value)``: the first one not done stops it, since those after it were touched later."""
    while table and done(next(iter(table.values()))):
        table.popitem(last=False)


class Pacer:
    """Work per key paced at ``rate`` units per second after a burst of ``burst`` seconds' worth
    (GCRA: each key keeps the time its work so far would be done at the rate).

    :meth:`delay` says how long a caller should wait before doing ``n`` more units; the caller
    waits (backpressure) rather than being refused, so nothing is dropped. ``rate == 0``: no
    limit. Only keys ahead of the clock are kept (:meth:`prune`), in the order of their last
    work: a key is due at most ``burst`` plus one call's work after it, so a prune stops at
    the first key still ahead (as :class:`KeyedLimiter`'s does).
    """

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.due = collections.OrderedDict()  # key -> when its work so far is done at the rate

    def __repr__(self):
        return f"<Pacer {self.rate:g}/s burst {self.burst:g}s keys={len(self.due)}>"

    def delay(self, key, n):
        """Seconds to wait before ``n`` more units of ``key`` (0.0 within the burst); charged now."""
        if not self.rate:
            return 0.0
        now = self.clock()
        due = max(self.due.pop(key, now), now) + n / self.rate
        self.due[key] = due
        return max(0.0, due - now - self.burst)

    def prune(self):
        now = self.clock()
        _prune(self.due, lambda due: due <= now)


class Guesses:
    """Password checks limited by their failures, per kind of key (user name, address, network).

    Login, ``passwd`` and ``delete_account`` all go through :meth:`attempt`, so a
    stolen session cannot guess its user's password faster than a stranger can.
    """

    def __init__(self, limiters):
        self.limiters = limiters  # kind -> KeyedLimiter

    def __repr__(self):
        return f"<Guesses {self.limiters}>"

    def attempt(self, keys, verify):
        """``verify()``'s answer for ``keys`` ((kind, key) pairs), or None without calling it while
        any key is out of attempts. Charged before the check, so checks in parallel cannot all
        pass the limit; refunded unless the answer was a failure (False)."""
        charged = [(self.limiters[kind], key) for kind, key in keys]
        if not all(limiter.allowed(key) for limiter, key in charged):
            return None
        for limiter, key in charged:
            limiter.charge(key)
        verified = None
        try:
            verified = verify()
        finally:
            if verified is not False:  # a success, or no answer (busy, store down): not a guess
                for limiter, key in charged:
                    limiter.refund(key)
        return verified
