"""Baseline (b): the minimal actor router, the ceiling of the design whatsup uses.

Each frame is decoded, its destination looked up, and the frame put on that
connection's gevent.queue mailbox; the connection's writer encodes whatever its
mailbox holds and writes it with one send. No auth, receipts or durability.
``python3 -m ops.bench.actor_router --listen 127.0.0.1:0``
"""
import gevent
from gevent.queue import Queue

from . import baseline

mailboxes = {}  # user -> Queue


def handle(sock, addr):
    user, _, buf = baseline.login(sock)
    mailbox = mailboxes[user] = Queue()
    writer = gevent.spawn(baseline.write, sock, mailbox)
    try:
        for frame in baseline.frames(sock, buf):
            frame["from"] = user
            box = mailboxes.get(frame["to"])
            if box is not None:
                box.put(frame)
    finally:
        writer.kill()
        mailboxes.pop(user, None)
        sock.close()


if __name__ == "__main__":
    baseline.main(handle, __doc__)
