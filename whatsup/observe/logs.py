"""What the node's log may hold: no secrets, and no more than an attacker's traffic is worth.

* :func:`redact` is what a crash report or the operator shell shows of a mailbox
  message or a frame: raw bytes only as their size (a session's last read may
  hold a ``login`` in clear), and the fields of ``login``, ``register`` and
  ``password`` frames only as ``<redacted>``. A password on its way to a hasher
  travels as a :class:`Secret`, whose repr never shows it.
* :class:`Summarizer` is a logging filter that lets through at most ``burst``
  records of one kind (logger, level, format string) per ``period`` seconds and
  then logs one line "N more like this in the last P s": a flood of refused
  frames or failed logins costs the log a few lines per period, not one per
  frame (docs/RELIABILITY.md, "Hostile traffic").
"""
import logging
import sys
import time

from . import logformat

#: Frame types whose fields (all but these) are secrets: a crash report never shows them.
SECRET_TYPES = frozenset({"login", "register", "password"})
SHOWN_FIELDS = frozenset({"type", "ref", "user"})
REDACTED = "<redacted>"
#: How much of a nested message redact() walks; what is deeper or longer is shown as "...".
DEPTH, ITEMS = 4, 32


class Secret:
    """A password passed between processes; its repr (in a crash report, a call's log) hides it."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Secret({REDACTED})"


def redact(obj, depth=DEPTH):
    """``obj`` as it may appear in a log: bytes by size, secret frame fields hidden, bounded in
    depth and length (so formatting it can neither recurse deeply nor run long)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{len(obj)} bytes>"
    if type(obj) is dict:
        if depth <= 0:
            return "{...}"
        secret = obj.get("type") in SECRET_TYPES
        return {k: (REDACTED if secret and k not in SHOWN_FIELDS else redact(v, depth - 1))
                for k, v in list(obj.items())[:ITEMS]}
    if type(obj) in (tuple, list):
        if depth <= 0:
            return type(obj)(("...",))
        return type(obj)(redact(v, depth - 1) for v in obj[:ITEMS])
    if isinstance(obj, str) and len(obj) > 200:
        return obj[:200] + "..."
    return obj


class Summarizer(logging.Filter):
    """At most ``burst`` records of one kind per ``period`` seconds, then a summary line.

    A kind is (logger, level, format string): the same event about a different
    address or user is the same kind. The summary of what was held back is
    emitted with the first record of that kind after the period ends, or by
    :meth:`flush` (the node's sweeper calls it every second), whichever comes
    first. The clock is a parameter so the rule is tested without sleeping.
    """

    def __init__(self, burst=10, period=10.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.period, self.clock = burst, period, clock
        self.kinds = {}  # kind -> [window start, records seen in the window, a sample record]

    def filter(self, record):
        if getattr(record, "summary", False):
            return True
        kind = (record.name, record.levelno, record.msg)
        now = self.clock()
        seen = self.kinds.get(kind)
        if seen is None or now - seen[0] >= self.period:
            if seen is not None:
                self._summarize(kind, seen)
            seen = self.kinds[kind] = [now, 0, record]
        seen[1] += 1
        return seen[1] <= self.burst

    def flush(self):
        """Log the summaries of the periods that ended; forget the kinds that went quiet."""
        now = self.clock()
        for kind, seen in list(self.kinds.items()):
            if now - seen[0] >= self.period:
                self._summarize(kind, seen)
                del self.kinds[kind]

    def _summarize(self, kind, seen):
        held = seen[1] - self.burst
        if held > 0:
            sample = seen[2]
            logging.getLogger(sample.name).log(
                sample.levelno, "%d more like this in the last %.0f s: %s", held, self.period,
                sample.getMessage(), extra={"summary": True})
            seen[1] = self.burst


_installed = []  # the Summarizer of setup(), for flush()


def setup(level, stream=sys.stderr, burst=10, period=10.0, fmt="text", node=None):
    """The node's logging: one stream handler whose records go through a Summarizer, written as
    ``fmt`` (server.log_format, whatsup/observe/logformat.py)."""
    summarizer = Summarizer(burst, period)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logformat.formatter(fmt, node))
    handler.addFilter(summarizer)
    logging.basicConfig(level=level, handlers=[handler])
    _installed[:] = [summarizer]


def flush():
    """Log the summaries that are due (the node's sweeper calls this every second)."""
    for summarizer in _installed:
        summarizer.flush()
