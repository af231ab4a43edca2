"""sd_notify(3) without libsystemd: tell systemd (Type=notify, ops/whatsupd.service) how we are.

systemd passes ``NOTIFY_SOCKET``, a Unix datagram socket (a path, or ``@name``
in the abstract namespace); each notification is one datagram of
``KEY=VALUE`` lines: ``READY=1`` once the listener is up, ``STOPPING=1`` when a
graceful stop begins, ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from a ticker
on the hub, so a frozen hub stops the pings and systemd restarts the node.
Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""
import logging
import os
import socket

log = logging.getLogger("whatsup.sdnotify")


def notify(state, env=os.environ):
    """Send ``state`` (e.g. "READY=1"); False when there is no socket or it refused (logged once
    per call: systemd is gone or overloaded, and the node serves on regardless)."""
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path[0] == "@":
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # a full receive queue must not block the hub
        try:
            sock.sendto(state.encode(), path)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", state.split("\n")[0], exc.strerror or exc)
            return False
    return True


def watchdog_interval(env=os.environ):
    """Seconds between two WATCHDOG=1 pings (half of systemd's WatchdogSec), or None when systemd
    watches no process or another one (``WATCHDOG_PID``)."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
