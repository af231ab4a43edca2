"""How a log line looks: ``server.log_format`` is ``text`` (for people) or ``json`` (for a log
pipeline: one JSON object per line, python-json-logger).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``node`` (server.node),
``pid`` (the OS process), ``message``, and ``user`` when the line was logged by a logged-in
user's session (the node marks each connection's greenlet with its process:
:func:`mark`), plus any ``extra`` fields of the record (a summary line has ``summary``).
"""
import logging

import gevent
from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


def mark(proc):
    """This greenlet runs ``proc``: its log lines can name the user it serves."""
    gevent.getcurrent().whatsup_process = proc


def current_user():
    """The user of the session process running now, if any (None elsewhere or before login)."""
    proc = getattr(gevent.getcurrent(), "whatsup_process", None)
    if proc is None or proc.state is None:
        return None
    describe = getattr(proc.behaviour, "describe", None)
    return describe(proc.state).get("user") if describe is not None else None


class NodeJsonFormatter(JsonFormatter):
    def __init__(self, node):
        super().__init__("%(levelname)s %(name)s %(process)d %(message)s", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"})
        self.node = node

    def add_fields(self, log_record, record, message_dict):
        super().add_fields(log_record, record, message_dict)
        log_record["node"] = self.node
        user = current_user()
        if user is not None:
            log_record["user"] = user


def formatter(fmt, node):
    """The logging.Formatter for ``server.log_format``."""
    if fmt == "json":
        return NodeJsonFormatter(node)
    return logging.Formatter(TEXT)
