"""A process owning one long-lived in-hub object that its callers use directly.

The router, presence, blocks and the group directory are objects every
session calls from its own greenlet, as offd's spools are: a call through a
mailbox would add a hop to every message and make every sender wait behind
one that waits for a restarting offd shard (docs/ARCHITECTURE.md, "Direct
calls", has the figure). What the process gives the object is everything else
a process has: a place in the tree (restart intensity, stopped by it), a line
in ``ps()``, a mailbox for the object's own timed work (``handle_info`` hands
each message to ``obj.handle_info``), and live code: a hot reload of the
object's module swaps the object's class in ``code_change``, so every caller
runs the new code from its next call (whatsup/shell/reload.py).

Contract: a module declares ``class RouterProcess(Service): kind = "router"``
next to its class, so a reload of that module finds the process; the object
may define ``started(proc)`` (called by every (re)start: it learns its pid,
re-arms its timers), ``handle_info(msg)`` and ``describe()``. The object
outlives a restart of its process (the router's dedup window is not rebuilt
from nothing; offd's spools are what a restart reloads from disk).
"""
import sys


class Service:
    vsn = 1

    @staticmethod
    def init(proc, obj):
        started = getattr(obj, "started", None)
        if started is not None:
            started(proc)
        return obj

    @staticmethod
    def describe(obj):
        describe = getattr(obj, "describe", None)
        return describe() if describe is not None else {"object": repr(obj)}

    @staticmethod
    def handle_info(proc, msg, obj):
        obj.handle_info(msg)
        return obj

    @staticmethod
    def code_change(obj, old_vsn):
        """The object runs its module's new class from now on (the reload has published the
        module: ``sys.modules`` holds the new one)."""
        obj.__class__ = getattr(sys.modules[type(obj).__module__], type(obj).__qualname__)
        return obj
