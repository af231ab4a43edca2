"""A process that runs a function every ``interval`` seconds (sweepers, maintenance passes).

A libev timer on the hub only puts ``("tick",)`` in the mailbox (no greenlet of
its own: the process is the only thing that lives); the function runs in the
process, so an exception crashes the process and its supervisor restarts it
(with the intensity rule) instead of a loop dying silently.
"""
import gevent

TICK = ("tick",)


class Ticker:
    kind = "ticker"
    vsn = 1

    @staticmethod
    def init(proc, interval, fn):
        timer = gevent.get_hub().loop.timer(interval, interval)
        mailbox = proc.mailbox
        timer.start(lambda: len(mailbox) or mailbox.put(TICK))  # a slow pass skips ticks, never queues them
        return {"interval": interval, "fn": fn, "timer": timer}

    @staticmethod
    def describe(st):
        return {"interval": st["interval"], "fn": getattr(st["fn"], "__qualname__", repr(st["fn"]))}

    @staticmethod
    def handle_info(proc, msg, st):
        if msg[0] != "tick":
            raise ValueError(f"ticker: unexpected message {msg!r}")
        st["fn"]()
        return st

    @staticmethod
    def terminate(proc, reason, st):
        st["timer"].close()
