"""Operator metrics: the node's counters as one dict, and as Prometheus text on a loopback port.

Contract:

* :func:`snapshot` ``(node) -> dict`` reads every counter the node keeps, in
  RAM, without blocking; the operator shell's ``stats()`` returns the same
  dict, so the live view and the scraped metrics never disagree;
* :func:`render` turns a snapshot into the Prometheus text exposition format
  (version 0.0.4); labelled families are dicts (``errors`` is code -> count);
* :class:`Exporter` serves ``GET /metrics`` on ``metrics.listen``. Empty means
  off. Only loopback addresses are accepted: the metrics name users' activity
  and are not meant for the network; put a scraper or a proxy on the host.
"""
import logging
import time

from gevent.pywsgi import WSGIServer

from .. import address
from . import latency
from ..runtime.endpoint import Endpoint

log = logging.getLogger("whatsup.metrics")


class Metric:
    """One metric family: name (without the ``whatsup_`` prefix), type, help, label name, getter."""
    __slots__ = ("name", "type", "help", "label", "get")

    def __init__(self, name, mtype, help, get, label=None):
        self.name, self.type, self.help, self.get, self.label = name, mtype, help, get, label


def _spools(node):
    """The open offd spools (a restarting shard has none for a moment)."""
    return [s for s in node.offd.spools if s is not None]


def _spool_stat(key):
    return lambda node: sum(s.stats().get(key, 0) for s in _spools(node))


_ids_bytes = _spool_stat("ids_bytes")


def _commit(attr):
    return lambda node: sum(s.stats()["commit_" + attr] for s in _spools(node))


def _mailboxes(node):
    return [len(p.mailbox) for p in node.table.processes()]


def _by_prefix(counter, prefix):
    return {k[len(prefix):]: v for k, v in counter.items() if k.startswith(prefix)}


def _frames(attr):
    """Frames of the ended sessions (counted as they end) plus those of the live ones."""
    def get(node):
        live = sum(getattr(p.state, attr, 0) for p in node.table.processes("session"))
        return node.counters[attr] + live
    return get


def _processes(node):
    kinds = {}
    for proc in node.table.processes():
        kinds[proc.kind] = kinds.get(proc.kind, 0) + 1
    return kinds


METRICS = (
    Metric("uptime_seconds", "gauge", "seconds since the node started",
           lambda n: round(time.time() - n.started, 3) if n.started else 0.0),
    Metric("connections_total", "counter", "client connections accepted",
           lambda n: n.counters["connections"]),
    Metric("disconnections_total", "counter", "client connections ended",
           lambda n: n.counters["disconnections"]),
    Metric("online_users", "gauge", "users with a logged-in session", lambda n: len(n.sm)),
    Metric("logins_total", "counter", "successful logins", lambda n: n.counters["logins"]),
    Metric("frames_in_total", "counter", "frames received from clients", _frames("frames_in")),
    Metric("frames_out_total", "counter", "frames queued to clients", _frames("frames_out")),
    Metric("messages_in_total", "counter", "msg frames routed (retransmissions included)",
           lambda n: n.router.counters["msg_in"]),
    Metric("retransmits_total", "counter", "msg frames whose id was already seen",
           lambda n: n.router.counters["retransmits"]),
    Metric("queue_full_total", "counter", "messages refused because the recipient's queue was full",
           lambda n: n.router.counters["queue_full"]),
    Metric("receipts_total", "counter", "delivered and read receipts queued",
           lambda n: n.router.counters["receipts"]),
    Metric("items_acked_total", "counter", "offd items acked by devices (messages out, delivered)",
           _spool_stat("acked")),
    Metric("offd_put_total", "counter", "items appended to offd", _spool_stat("put")),
    Metric("offd_expired_total", "counter", "undelivered items dropped by expiry", _spool_stat("expired")),
    Metric("offd_compactions_total", "counter", "offd segment compactions", _spool_stat("compactions")),
    Metric("offd_queued_items", "gauge", "items in offd waiting for a device ack",
           lambda n: n.offd.queued()),
    Metric("offd_bytes", "gauge", "bytes in offd segment files and ids files",
           lambda n: sum(seg.size for s in _spools(n) for seg in s.segments.values()) + _ids_bytes(n)),
    Metric("offd_carried_ids_total", "counter", "dedup window entries written to offd ids files (by "
           "compaction, and again by their rewrites)", _spool_stat("carried_ids")),
    Metric("offd_commit_batches_total", "counter", "offd group commits (write + fsync)",
           _commit("batches")),
    Metric("offd_commit_failures_total", "counter", "offd group commits that failed", _commit("failures")),
    Metric("offd_commit_seconds_total", "counter", "seconds spent in offd group commits; divided by "
           "the batches, the mean fsync latency", _commit("seconds")),
    Metric("processes", "gauge", "live processes by kind", _processes, label="kind"),
    Metric("mailbox_depth", "gauge", "messages waiting in all mailboxes", lambda n: sum(_mailboxes(n))),
    Metric("mailbox_depth_max", "gauge", "the longest mailbox", lambda n: max(_mailboxes(n), default=0)),
    Metric("process_restarts", "gauge", "restarts behind the live processes (a supervisor's child "
           "restarted 3 times counts 3)", lambda n: sum(p.restarts for p in n.table.processes())),
    Metric("reloads_total", "counter", "hot code reloads", lambda n: n.counters["reloads"]),
    Metric("errors_total", "counter", "error frames sent, by code",
           lambda n: _by_prefix(n.counters, "error:"), label="code"),
    Metric("users", "gauge", "registered accounts", lambda n: len(n.accounts.users)),
    Metric("push_sent_total", "counter", "push notifications the gateway accepted",
           lambda n: n.push.counters["sent"]),
    Metric("push_failures_total", "counter", "POSTs to the push gateway that failed (timeout, error, "
           "HTTP 5xx); each is retried with backoff", lambda n: n.push.counters["failures"]),
    Metric("push_dropped_total", "counter", "push notifications given up after push.retries",
           lambda n: n.push.counters["dropped"]),
    Metric("push_rejected_total", "counter", "push notifications the gateway refused (HTTP 4xx)",
           lambda n: n.push.counters["rejected"]),
    Metric("push_pending", "gauge", "devices with a push notification waiting (coalesced or retrying)",
           lambda n: len(n.push.schedule.pending)),
    Metric("push_breaker_open", "gauge", "1 while the push gateway's circuit breaker is open",
           lambda n: int(n.push.schedule.open_until is not None)),
    Metric("cluster_events_total", "counter", "a cluster node's traffic and faults (whatsup/cluster/link.py): "
           "entries sent/received/acked, requests forwarded/failed, write/read/lease failures, nodes down, "
           "pending entries read again, stale and late entries dropped, placements reaped, calls and casts "
           "served per service (call:NAME, cast:NAME); none on a single node",
           lambda n: dict(n.link.counters) if n.link is not None else {}, label="event"),
    Metric("cluster_nodes_live", "gauge", "nodes whose lease holds, this one included (0: a single node)",
           lambda n: len(n.link.live) if n.link is not None else 0),
    Metric("cluster_waiting", "gauge", "entries waiting for this node's outbox, and requests forwarded and "
           "not answered yet", lambda n: len(n.link.out) + len(n.link.inflight) if n.link is not None else 0),
)


def snapshot(node):
    """Every metric's current value: name -> number, or label value -> number for labelled ones;
    under ``latency`` the histograms and process metrics of whatsup.observe.latency."""
    return {**{m.name: m.get(node) for m in METRICS}, "latency": latency.snapshot()}


def render(snap):
    """The Prometheus text exposition (0.0.4) of a :func:`snapshot`."""
    lines = []
    for m in METRICS:
        name = "whatsup_" + m.name
        lines += [f"# HELP {name} {m.help}", f"# TYPE {name} {m.type}"]
        value = snap.get(m.name, 0)
        if m.label is None:
            lines.append(f"{name} {value}")
        else:
            lines += [f'{name}{{{m.label}="{_escape(k)}"}} {v}' for k, v in sorted(value.items())]
    return "\n".join(lines) + "\n" + latency.render(snap.get("latency", {}))


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exporter(Endpoint):
    """``GET /metrics`` for one node on ``metrics.listen`` (an Endpoint, as the operator shell is)."""
    what = "metrics"

    def _server(self):
        if not self.listen:
            return None
        where = address.loopback(self.listen, "metrics.listen", "metrics name users' activity")
        return WSGIServer(where, self._app, log=None, error_log=log)

    def start(self):
        super().start()
        if self.server is not None:
            log.info("metrics on http://%s:%d/metrics", *self.server.address[:2])
        return self

    def _app(self, environ, start_response):
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"try GET /metrics\n"]
        body = render(snapshot(self.node)).encode()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
