"""A process that runs a function every ``interval`` seconds (sweepers, maintenance passes).

The timer greenlet only puts ``("tick",)`` in the mailbox; the function runs in
the process, so an exception crashes the process and its supervisor restarts
it (with the intensity rule) instead of a loop dying silently.
"""
import gevent


class Ticker:
    kind = "ticker"
    vsn = 1

    @staticmethod
    def init(proc, interval, fn):
        def timer():
            while True:
                gevent.sleep(interval)
                if not len(proc.mailbox):  # a slow pass skips ticks instead of queueing them
                    proc.mailbox.put(("tick",))
        return {"interval": interval, "fn": fn, "timer": gevent.spawn(timer)}

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
        st["timer"].kill(block=False)
