"""Baseline (c): the actor router doing whatsup's acks and receipts, in RAM.

The fair anchor for issue 10's targets, as ejabberd with XEP-0198 acks and
XEP-0184 receipts was for ejabberd: the same six frames per message as whatsup
(msg, ✓ ``sent``, the push with the recipient's ``seq``, the device's cumulative
``ack``, the ✓✓ ``receipt`` with the sender's ``seq``, and its ``ack``), over
the subset of docs/PROTOCOL.md the load generator speaks (hello, register,
login, msg, ack, ping). A user's pushed items wait in a deque until acked,
like whatsup's queues. What (c) leaves out is whatsup's product: passwords,
validation, dedup, the spool and its fsync before ✓, supervision, limits. So
(b) → (c) is what the acks and receipts cost in this runtime, and (c) → whatsup
what the product costs on top.
``python3 -m ops.bench.receipt_router --listen 127.0.0.1:0``
"""
import collections
import socket
import time

import gevent
from gevent.queue import Queue

from . import baseline, wire

IDLE_TIMEOUT = 300.0  # what hello advertises: the load generator pings at a third of it, as for whatsup
users = {}  # name -> User (logged in)


class User:
    __slots__ = ("name", "mailbox", "seq", "unacked")

    def __init__(self, name):
        self.name, self.mailbox, self.seq = name, Queue(), 0
        self.unacked = collections.deque()  # (seq, sender or None for a receipt, id), pushed, not acked

    def push(self, frame, sender=None, cid=None):
        self.seq += 1
        frame["seq"] = self.seq
        self.unacked.append((self.seq, sender, cid))
        self.mailbox.put(frame)


def handle(sock, addr):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    user, buf = None, bytearray()
    writer = None
    try:
        for frame in baseline.frames(sock, buf):
            if user is not None:
                _frame(user, frame)
                continue
            answer = _setup(frame)
            if frame["type"] == "login":
                user = users[frame["user"]] = User(frame["user"])
                writer = gevent.spawn(baseline.write, sock, user.mailbox)
                user.mailbox.put(answer)
            else:
                sock.sendall(wire.encode(answer))
    finally:
        if writer is not None:
            writer.kill()
            users.pop(user.name, None)
        sock.close()


def _setup(frame):
    """The answer to a frame of the handshake (or a ping, at any time)."""
    kind, ref = frame["type"], frame.get("ref")
    if kind == "hello":
        return {"type": "hello", "ref": ref, "version": 1, "server": "receipt_router", "idle_timeout": IDLE_TIMEOUT}
    if kind == "ping":
        return {"type": "pong"}
    return {"type": "ok", "ref": ref, "user": frame.get("user")}  # register, login: anyone is welcome


def _frame(user, frame):
    kind = frame["type"]
    if kind == "msg":
        ts = int(time.time() * 1000)
        user.mailbox.put({"type": "sent", "ref": frame["ref"], "id": frame["id"], "ts": ts})
        to = users.get(frame["to"])
        if to is not None:
            to.push({"type": "msg", "ts": ts, "from": user.name, "id": frame["id"], "body": frame["body"]},
                    user.name, frame["id"])
    elif kind == "ack":
        _acked(user, frame["seq"])
    elif kind == "ping":
        user.mailbox.put(_setup(frame))


def _acked(user, upto):
    """Drop what ``upto`` covers; each sender of a covered message gets one ✓✓ receipt for its ids."""
    ids = {}
    while user.unacked and user.unacked[0][0] <= upto:
        _, sender, cid = user.unacked.popleft()
        if sender is not None:
            ids.setdefault(sender, []).append(cid)
    ts = int(time.time() * 1000)
    for sender, cids in ids.items():
        to = users.get(sender)
        if to is not None:
            to.push({"type": "receipt", "ts": ts, "from": user.name, "status": "delivered", "ids": cids})


if __name__ == "__main__":
    baseline.main(handle, __doc__)
