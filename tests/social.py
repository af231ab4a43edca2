"""Helpers shared by the group, presence, blocking and dedup tests (real server, real clients)."""
import os
import time
from concurrent.futures import ThreadPoolExecutor

SPOOLED = ("msg", "receipt", "group_event")


def register_many(server, users, connections=16):
    """Register ``users`` over parallel connections, so the account store group-commits them."""
    users = list(users)
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(lambda part: server.register(*part), [users[i::connections] for i in range(connections)]))
    return users


def wait_for(predicate, what, timeout=20.0):
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def take(client, n, kinds=SPOOLED, timeout=15.0):
    """The next ``n`` pushed frames of ``kinds``; the others are kept aside for later calls."""
    stash = client.__dict__.setdefault("stash", [])
    got = [f for f in stash if f["type"] in kinds][:n]
    for f in got:
        stash.remove(f)
    while len(got) < n:
        frame = client.recv(timeout)
        assert frame is not None, f"{client.user}: got {len(got)} of {n} frames: {got[-3:]}"
        (got if frame["type"] in kinds else stash).append(frame)
    client.flush_acks()  # the application has them all now, stashed or not
    return got


def quiet(client, idle=0.3, kinds=SPOOLED + ("presence", "typing")):
    """Frames of ``kinds`` that arrive until ``idle`` seconds pass without any (expected: none)."""
    return [f for f in client.drain(idle) if f["type"] in kinds]


def restart_after_compaction(server):
    """Wait until compaction dropped the first segment of (one-shard) offd, then stop and start."""
    first = os.path.join(server.data_dir, "offd", "shard-000", "seg-0000000001.log")
    deadline = time.monotonic() + 20
    while os.path.exists(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(first), "compaction never dropped the first segment"
    server.stop()
    server.start()
