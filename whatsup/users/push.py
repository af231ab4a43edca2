"""Push notifications (the XEP-0357 / mod_push idea; docs/PROTOCOL.md, "Push notifications").

A device registers a push ``token`` and its endpoint ``kind`` (``push_register``).
When an item is queued for a user who is offline, the node tells a push
gateway (``push.url``) with an HTTP POST of a JSON object::

    {"kind": "fcm", "token": "...", "count": 3}

``count`` is the number of messages waiting. No message content leaves the
node unless the operator opts in (``push.include_content``: then
``"messages"`` holds the newest three, ``from``, ``group`` and ``body``).

Three parts:

* :class:`Push` is what the node calls: ``queued(user)`` on the hub for every
  item queued for an offline user (a dict lookup and, for the first item of a
  burst, a timer entry), and the ``push_register``/``push_unregister`` frames;
* :class:`Schedule` is the I/O-free core (fake-clock tested): one pending
  entry per device, so a burst coalesces into one notification sent
  ``push.delay`` seconds after its first item; retries with exponential backoff
  (``push.backoff`` doubling up to ``push.backoff_max``, ``push.retries`` at
  most); and a circuit breaker: after ``push.breaker_failures`` failures in a
  row, nothing is sent for ``push.breaker_cooldown`` seconds, then one
  attempt decides;
* :class:`PushWorker` is the process in the supervision tree that sends: a
  POST runs on its own native thread (urllib3, ``push.timeout``), and the
  process waits for it, not the hub. Delivery never waits for a push: a slow,
  failing or hanging gateway costs at most pending entries (one per device)
  and failure counters.
"""
import json
import logging
import time

import urllib3
from gevent.threadpool import ThreadPool

from ..store.tables import Records
from ..store.offd import ShardDown
from ..protocol import unpack
from ..runtime.timers import DeadlineHeap

log = logging.getLogger("whatsup.push")
MESSAGES = ("msg", "gmsg")  # the item kinds a push counts (receipts and events wake nobody)


class Schedule:
    """When to notify which device: pending entries, backoff and the breaker (no I/O).

    Each entry's due time is also in a heap (an entry whose time changed leaves a stale one
    there, skipped when it comes up), so a wake-up costs what is due: with the gateway down,
    every offline user who got a message waits here, and each wake walked all of them."""

    def __init__(self, delay, backoff, backoff_max, retries, breaker_failures, breaker_cooldown):
        self.delay, self.backoff, self.backoff_max, self.retries = delay, backoff, backoff_max, retries
        self.breaker_failures, self.breaker_cooldown = breaker_failures, breaker_cooldown
        self.pending = {}        # user -> [when due, attempts made, items queued since it was taken]
        self.wakes = DeadlineHeap()  # (when due, user), stale ones included
        self.failures = 0        # in a row, all devices together (the gateway's health)
        self.open_until = None   # the breaker is open (nothing is sent) until then

    def __repr__(self):
        state = f"open until {self.open_until:.1f}" if self.open_until is not None else "closed"
        return f"<Schedule pending={len(self.pending)} failures={self.failures} breaker={state}>"

    def queued(self, user, now):
        """An item for offline ``user``: True when this starts a notification (wake at ``due``)."""
        entry = self.pending.get(user)
        if entry is not None:
            entry[2] = True  # coalesced into the one waiting (or told again if it is being sent)
            return False
        self._wait(user, [now + self.delay, 0, False])
        return True

    def due(self, now):
        """The devices to notify now (none while the breaker is open; one to probe after it).
        They stay due until ``sent``, ``failed`` or ``dropped`` says otherwise."""
        if self.blocked(now):
            return []
        ready = []
        for when, user in self.wakes.pop_due(now):
            entry = self.pending.get(user)
            if entry is not None and entry[0] == when and user not in ready[-1:]:
                ready.append(user)
                self.wakes.push((when, user))
        return ready[:1] if self.open_until is not None else ready  # half-open: one attempt decides

    def take(self, user):
        """``user``'s notification is being sent: what is queued from now on needs another one."""
        self.pending[user][2] = False

    def blocked(self, now):
        """True while the breaker is open and the next probe is not due."""
        return self.open_until is not None and now < self.open_until

    def sent(self, user, now):
        """Success; items queued while it was on its way make a new notification (True)."""
        self.failures, self.open_until = 0, None
        entry = self.pending.pop(user, None)
        if entry is not None and entry[2]:
            self._wait(user, [now + self.delay, 0, False])
            return True
        return False

    def dropped(self, user):
        """Nothing to send after all (the user came online, or has only receipts waiting)."""
        self.pending.pop(user, None)

    def failed(self, user, now):
        """The gateway failed for ``user``: retry later, or give up (returns False) after retries."""
        self.failures += 1
        if self.failures >= self.breaker_failures:
            self.open_until = now + self.breaker_cooldown
        entry = self.pending.get(user)
        if entry is None:
            return False
        entry[1] += 1
        if entry[1] > self.retries:
            del self.pending[user]
            return False
        entry[0] = now + min(self.backoff * 2 ** (entry[1] - 1), self.backoff_max)
        self.wakes.push((entry[0], user))
        return True

    def next_wake(self):
        """When something may be due next (None: nothing pending; a stale entry may wake early)."""
        earliest = self.wakes.earliest() if self.pending else None
        if earliest is None:
            return None
        return max(earliest, self.open_until) if self.open_until is not None else earliest

    def _wait(self, user, entry):
        self.pending[user] = entry
        self.wakes.push((entry[0], user))


class Push:
    """The node's push service: devices' tokens (a durable Table), the schedule, the counters."""

    def __init__(self, cfg, sm, offd, timers, clock=time.monotonic):
        self.url, self.include_content, self.timeout = cfg.push.url, cfg.push.include_content, cfg.push.timeout
        self.sm, self.offd, self.timers, self.clock = sm, offd, timers, clock
        self.schedule = Schedule(cfg.push.delay, cfg.push.backoff, cfg.push.backoff_max,
                                 cfg.push.retries, cfg.push.breaker_failures, cfg.push.breaker_cooldown)
        self.devices = Records()  # user -> {"kind", "token"}, in the social file's push table
        self.pid = None     # the PushWorker, while it runs
        self.counters = {"sent": 0, "failures": 0, "dropped": 0, "rejected": 0}

    def __repr__(self):
        return f"<Push {self.url or 'off'} devices={len(self.devices)} {self.schedule!r} {self.counters}>"

    def queued(self, user):
        """Runs on the hub for each item queued for an offline user: never blocks."""
        if not self.url or user not in self.devices:
            return
        if self.schedule.queued(user, self.clock()) and self.pid is not None:
            self.timers.notify_at(self.schedule.pending[user][0], self.pid, ("wake",))

    # --- frames (docs/PROTOCOL.md, "Push notifications") ---------------------------------------

    def register(self, user, pid, f):
        self.devices.store(user, {"kind": f["kind"], "token": f["token"]})
        return {"type": "ok", "ref": f["ref"]}

    def unregister(self, user, pid, f):
        if user in self.devices:
            self.devices.store(user, None)
        self.schedule.dropped(user)
        return {"type": "ok", "ref": f["ref"]}

    # --- what the worker sends ---------------------------------------------------------------

    def notification(self, user):
        """The JSON body for ``user``'s device, or None when there is nothing to tell."""
        device = self.devices.get(user)
        if device is None or self.sm.lookup(user) is not None:
            return None
        try:
            items = [i for i in self.offd.items(user) if i.kind in MESSAGES]
        except ShardDown:
            items = None  # the shard restarts: tell the count we cannot know as 1
        if items == []:
            return None
        body = {"kind": device["kind"], "token": device["token"], "count": len(items) if items else 1}
        if self.include_content and items:
            frames = [unpack(i.frame) for i in items[-3:]]
            body["messages"] = [{k: f[k] for k in ("from", "group", "body") if k in f} for f in frames]
        return body


def post(http, url, body, timeout):
    """One POST (runs on the worker's native thread): the HTTP status, or the exception's name."""
    try:
        response = http.request("POST", url, body=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"},
                                timeout=urllib3.Timeout(total=timeout), retries=False)
        return response.status
    except Exception as exc:  # urllib3 and socket errors: a failure to count and retry, never a crash
        return type(exc).__name__


class PushWorker:
    """The process that sends notifications (gen_server callbacks); ``init(proc, push)``."""
    kind = "push"
    vsn = 1

    @staticmethod
    def init(proc, push):
        push.pid = proc.pid
        state = {"push": push, "pool": ThreadPool(1), "http": urllib3.PoolManager(num_pools=4, maxsize=1)}
        PushWorker._rearm(proc, push)
        return state

    @staticmethod
    def describe(state):
        push = state["push"]
        return {"url": push.url, "schedule": repr(push.schedule), **push.counters}

    @staticmethod
    def handle_info(proc, msg, state):
        if msg[0] != "wake":
            raise ValueError(f"push: unexpected message {msg!r}")
        push = state["push"]
        for user in push.schedule.due(push.clock()):
            if push.schedule.blocked(push.clock()):
                break  # the breaker opened on the way: the rest wait for it
            PushWorker._notify(push, state, user)
        PushWorker._rearm(proc, push)
        return state

    @staticmethod
    def terminate(proc, reason, state):
        state["push"].pid = None
        state["pool"].kill()
        state["http"].clear()

    @staticmethod
    def _notify(push, state, user):
        push.schedule.take(user)
        body = push.notification(user)
        if body is None:
            push.schedule.dropped(user)
            return
        status = state["pool"].apply(post, (state["http"], push.url, body, push.timeout))
        if isinstance(status, int) and status < 300:
            push.schedule.sent(user, push.clock())
            push.counters["sent"] += 1
        elif isinstance(status, int) and status < 500:  # the gateway refuses it: retrying will not help
            push.schedule.dropped(user)
            push.counters["rejected"] += 1
            log.warning("push gateway refused the notification of %s: HTTP %d", user, status)
        else:
            push.counters["failures"] += 1
            if not push.schedule.failed(user, push.clock()):
                push.counters["dropped"] += 1
                log.warning("push notification of %s dropped after %d retries (last: %s)",
                            user, push.schedule.retries, status)

    @staticmethod
    def _rearm(proc, push):
        when = push.schedule.next_wake()
        if when is not None:
            push.timers.notify_at(when, proc.pid, ("wake",))
