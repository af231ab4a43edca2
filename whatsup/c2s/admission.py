"""Admission of password hashing: bounded, fair between networks, with a lane for known users.

Implements docs/PROTOCOL.md ("Logins") and docs/RELIABILITY.md ("Hostile traffic"). A scrypt
check costs ~90 ms of CPU at the default cost, so a node hashes a few dozen passwords a
second; a login storm from many addresses once queued thousands behind the hashers and
legitimate logins waited minutes (issue 11). Pure objects with an injected clock; the waiting
itself is done by whatsup/store/accounts.py.

* :class:`Admission` admits a check only while its address has fewer than ``per_ip`` and
  its network (/24 IPv4, /56 IPv6: :func:`prefix`) fewer than ``per_prefix`` checks admitted,
  and while fewer than ``max_waiting`` wait node-wide; anything else is refused at once with
  :class:`Refused` (``busy``, with a retry-after estimated from the measured hash time).
  Waiting checks are served round-robin by network, so a network that floods waits behind
  its own requests, not in front of everyone else's.
* :class:`KnownLogins` remembers, for a bounded time, a fast keyed digest of the last
  successful password of recently logged-in users: a user who logs in again with that
  password needs no scrypt and no admission, so known users keep getting in during a storm
  that fills the hashers. The trade-off is stated in docs/RELIABILITY.md.
"""
import collections
import functools
import hashlib
import hmac
import ipaddress
import os
import time


class Refused(Exception):
    """A login or registration not handled now: answer ``code`` with ``retry_after`` seconds."""

    def __init__(self, code, why, retry_after):
        super().__init__(why)
        self.code, self.retry_after = code, retry_after


def prefix(ip):
    """The network ``ip`` is counted in: its /24 (IPv4, also IPv4-mapped) or /56 (IPv6).
    A dotted quad takes a string fast path: ipaddress took 60 µs an accept (ops/attack.py)."""
    if ip.count(".") == 3 and ip.replace(".", "").isdigit():
        return ip[:ip.rindex(".")] + ".0/24"
    return _prefix(ip)


@functools.lru_cache(maxsize=4096)
def _prefix(ip):
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 56}", strict=False))


class Ticket:
    """One admitted check: ``running`` once it may use a hasher; ``wake`` is the adapter's."""
    __slots__ = ("ip", "prefix", "running", "started", "wake")

    def __init__(self, ip, net):
        self.ip, self.prefix, self.running, self.started, self.wake = ip, net, False, None, None

    def __repr__(self):
        return f"<Ticket {self.ip} {'running' if self.running else 'waiting'}>"


class Admission:
    """``workers`` checks run at once; the rest wait, bounded per address, network and node."""

    def __init__(self, workers, max_waiting, per_ip, per_prefix, busy_code="busy", clock=time.monotonic):
        self.workers, self.max_waiting = workers, max_waiting
        self.per_ip, self.per_prefix, self.busy_code, self.clock = per_ip, per_prefix, busy_code, clock
        self.running = 0
        self.queues = collections.OrderedDict()  # network -> deque of waiting tickets, in turn order
        self.waiting = 0
        self.by_ip = collections.Counter()       # admitted (running or waiting) per address
        self.by_prefix = collections.Counter()   # ... and per network
        self.service = 0.1                       # seconds a check takes (moving average)
        self.refused = 0

    def __repr__(self):
        return (f"<Admission running={self.running}/{self.workers} waiting={self.waiting}/"
                f"{self.max_waiting} networks={len(self.queues)} refused={self.refused} "
                f"service={self.service * 1000:.0f}ms>")

    def enter(self, ip):
        """Admit a check from ``ip``: a Ticket (running at once if a worker is free and nobody
        waits), or Refused."""
        net = prefix(ip)
        if self.by_ip[ip] >= self.per_ip:
            self._refuse(f"more than {self.per_ip} password checks at once from one address")
        if self.by_prefix[net] >= self.per_prefix:
            self._refuse(f"more than {self.per_prefix} password checks at once from one network")
        ticket = Ticket(ip, net)
        if self.running < self.workers and not self.waiting:
            self._run(ticket)
        elif self.waiting >= self.max_waiting:
            self._refuse("the server is busy checking passwords")
        else:
            self.queues.setdefault(net, collections.deque()).append(ticket)
            self.waiting += 1
        self.by_ip[ip] += 1
        self.by_prefix[net] += 1
        return ticket

    def leave(self, ticket):
        """``ticket`` is done, or gave up waiting; returns the ticket that runs next, if any."""
        for counter, key in ((self.by_ip, ticket.ip), (self.by_prefix, ticket.prefix)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if ticket.running:
            self.running -= 1
            self.service += (self.clock() - ticket.started - self.service) * 0.2
        else:
            queue = self.queues[ticket.prefix]
            queue.remove(ticket)
            self.waiting -= 1
            if not queue:
                del self.queues[ticket.prefix]
        return self._next()

    def retry_after(self):
        """Seconds until what is admitted now has likely been served (at least half a second)."""
        return round(max(0.5, (self.running + self.waiting + 1) * self.service / self.workers), 1)

    def _next(self):
        if self.running >= self.workers or not self.queues:
            return None
        net, queue = next(iter(self.queues.items()))
        ticket = queue.popleft()
        self.waiting -= 1
        if queue:
            self.queues.move_to_end(net)  # the next network's turn
        else:
            del self.queues[net]
        self._run(ticket)
        return ticket

    def _run(self, ticket):
        ticket.running, ticket.started = True, self.clock()
        self.running += 1

    def _refuse(self, why):
        self.refused += 1
        raise Refused(self.busy_code, why, self.retry_after())


class KnownLogins:
    """The last good password of up to ``size`` users, for ``ttl`` seconds, as an HMAC-SHA256
    under a key made at start (RAM only, never written). ``size == 0`` turns the lane off."""

    def __init__(self, size, ttl, clock=time.monotonic):
        self.size, self.ttl, self.clock = size, ttl, clock
        self._key = os.urandom(32)
        self._entries = collections.OrderedDict()  # user -> (digest, expires), oldest first
        self.hits = 0

    def __repr__(self):
        return f"<KnownLogins {len(self._entries)}/{self.size} ttl={self.ttl:g}s hits={self.hits}>"

    def __len__(self):
        return len(self._entries)

    def _digest(self, user, password):
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def check(self, user, password):
        """True when ``password`` is the one ``user`` last logged in with, within ``ttl``."""
        entry = self._entries.get(user)
        if entry is None:
            return False
        digest, expires = entry
        if self.clock() >= expires:
            del self._entries[user]
            return False
        if hmac.compare_digest(digest, self._digest(user, password)):
            self.hits += 1
            return True
        return False

    def remember(self, user, password):
        if not self.size:
            return
        self._entries.pop(user, None)
        self._entries[user] = (self._digest(user, password), self.clock() + self.ttl)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, user):
        """Drop ``user``'s entry (their password changed, or the account is gone)."""
        self._entries.pop(user, None)
