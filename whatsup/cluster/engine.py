"""Connections to Redis that never block the hub and never retry behind our back.

whatsup does not monkey-patch, so redis-py's own sockets would block the hub:
:class:`GeventConnection` makes its sockets with ``gevent.socket`` (redis-py's
parser then reads cooperatively). redis-py 8 defaults to a 5 s socket timeout
and 10 silent retries, and both bite: a retried ``XADD`` whose first attempt
landed appends the entry twice, and an ``XREADGROUP BLOCK`` longer than the
socket timeout is re-sent again and again for about a minute. So every client
here has ``retries=0`` and explicit timeouts; the callers retry what is safe to
retry (:func:`retrying`), and every ``BLOCK`` stays below ``timeout``
(whatsup/cluster/inbox.py). The pool waits for a free connection on a gevent
queue, not a thread lock.
"""
import logging
import socket
import time

import gevent
import gevent.queue
import gevent.socket
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeout
from redis.retry import Retry

log = logging.getLogger("whatsup.cluster")
#: What a lost or slow Redis raises: the operation may or may not have been applied.
UNREACHABLE = (RedisConnectionError, RedisTimeout, OSError)


class GeventConnection(redis.Connection):
    """redis-py's TCP connection on a gevent socket: its reads and writes yield to the hub."""

    def _connect(self):
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.socket_connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        return sock


class GeventUnixConnection(redis.UnixDomainSocketConnection):
    def _connect(self):
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.socket_connect_timeout)
        sock.connect(self.path)
        sock.settimeout(self.socket_timeout)
        return sock


def connect(url, timeout, connections=4):
    """A client of ``url`` whose every command fails after ``timeout`` seconds, with no retry."""
    kwargs = redis.connection.parse_url(url)
    cls = GeventUnixConnection if "path" in kwargs else GeventConnection
    pool = redis.BlockingConnectionPool(
        connection_class=cls, queue_class=gevent.queue.LifoQueue, max_connections=connections,
        timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), health_check_interval=0, **kwargs)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def retrying(op, deadline, what, first=0.05, cap=1.0, sleep=gevent.sleep, clock=time.monotonic):
    """``op()`` until it returns, retrying a lost connection with a doubling pause until the
    ``deadline`` (a monotonic time); then the last error is raised. Only for what is safe to
    repeat: reads, idempotent writes, and appends whose readers drop duplicates."""
    pause, failures = first, 0
    while True:
        try:
            return op()
        except UNREACHABLE as exc:
            failures += 1
            if failures == 1:
                log.warning("redis: %s failed (%s): retrying until it answers", what, exc)
            if clock() + pause > deadline:
                raise
            sleep(pause)
            pause = min(cap, pause * 2)
