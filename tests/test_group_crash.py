"""kill -9 in the middle of group fan-outs: every ✓'d copy reaches every member exactly once, in order.

docs/RELIABILITY.md: a group message is durable once (its intent: body and members) before
any copy is queued; recovery completes a fan-out a crash cut short; the dedup window never
answers ✓ for a message whose fan-out is not fully durable; a retransmission after
compaction and a restart is recognised for groups as for 1:1.
"""
import os
import random
import threading
import time

import pytest

from social import register_many, restart_after_compaction, take
from whatsup.client import Closed
from whatsup.store.offd import record, shard_of
from whatsup.routing.router import group_frame

MEMBERS = 64
TRIALS = 8
BURST = 300     # at most, per trial: the kill comes first
IN_FLIGHT = 100 # messages without ✓ at most: pipelined bursts keep fan-outs running at the kill


class EveryCopy:
    """A device's memory of shown ids that shows everything: the test counts raw copies."""

    @staticmethod
    def add(key):
        return True


def pipeline(client, gid, ids, acked, sent=None):
    """Send ``ids`` pipelined (IN_FLIGHT without ✓ at most; each one sent is added to
    ``sent``), collecting their ✓ into ``acked``, until the node dies or every ✓ came."""
    try:
        for mid in ids:
            client.send_nowait(None, f"body of {mid}", id=mid, group=gid)
            if sent is not None:
                sent.append(mid)
            while len(sent or ids) - len(acked) >= IN_FLIGHT:
                _collect(client, acked)
        while len(acked) < len(ids):
            _collect(client, acked)
    except (Closed, OSError, TimeoutError):
        pass


def _collect(client, acked):
    frame = client.recv(5)
    if frame is None:
        raise TimeoutError("no ✓ for 5 s")
    if frame["type"] == "sent":
        acked.add(frame["id"])


def until_acked(server, user, gid, ids):
    """The sender after a restart: the same ids again, in order, until each got ✓."""
    acked = set()
    with server.client(user) as c:
        pipeline(c, gid, ids, acked, [])
    assert acked == set(ids)


@pytest.mark.slow
def test_group_fan_outs_cut_by_kill_9_deliver_every_message_exactly_once_in_order(make_server):
    server = make_server()
    owner, *members = register_many(server, ["writer"] + [f"gm{i:03d}" for i in range(MEMBERS)])
    with server.client(owner) as c:
        gid = c.group_create("crashy", members)
    rng = random.Random(11)
    sent, acked_before_kill, cut = [], set(), 0
    for trial in range(TRIALS):
        ids, acked = [], set()
        writer = server.client(owner)
        t = threading.Thread(target=pipeline, args=(writer, gid, [f"t{trial}-{i}" for i in range(BURST)],
                                                    acked, ids))
        t.start()
        # somewhere in the middle of the fan-outs: after a random number of ✓ (none: right after
        # the first send), with up to IN_FLIGHT more on their way; a condition, not a delay, so
        # neither a loaded nor a quiet machine moves the kill out of the fan-outs
        kill_after = rng.randint(0, BURST - 2 * IN_FLIGHT)
        deadline = time.monotonic() + 60
        while (len(acked) < kill_after or not ids) and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        server.kill()
        t.join(10)
        writer.sock.close()
        acked_before_kill |= acked
        cut += len(ids) - len(acked)
        sent += ids
        server.start()
        until_acked(server, owner, gid, ids)
    assert acked_before_kill, "no message got ✓ before a kill: the kills came too early to test anything"
    assert cut, "every fan-out was over before its kill: the kills came too late to test anything"
    for member in members:
        with server.client(member, seen=EveryCopy()) as c:
            got = [f["id"] for f in take(c, len(sent), ("msg",))]
            assert [f for f in c.drain(0.05) if f["type"] == "msg"] == []
        assert got == sent, f"{member}: {len(set(sent) - set(got))} lost, {len(got) - len(set(got))} twice"


def test_a_group_retransmission_after_compaction_and_a_restart_is_acked_but_not_delivered_again(make_server):
    srv = make_server({"offd.shards": 1, "offd.segment_bytes": 4096, "offd.maintenance_interval": 0.1})
    srv.register("alice", "bob", "carol")
    with srv.client("alice") as alice:
        gid = alice.group_create("trio", ["bob", "carol"])
        for n in range(40):
            alice.send(None, "x" * 200, id=f"g{n}", group=gid)
    for user in ("bob", "carol"):  # delivered and acked: only carried ids keep g0 known
        with srv.client(user) as c:
            assert len(take(c, 40, ("msg",))) == 40
    restart_after_compaction(srv)
    with srv.client("alice") as alice:  # alice's phone missed the ✓ of g0 and sends it again
        assert alice.send(None, "x" * 200, id="g0", group=gid)["type"] == "sent"
    for user in ("bob", "carol"):
        with srv.client(user) as c:
            assert [f["id"] for f in c.drain(1.0) if f["type"] == "msg"] == []


def test_a_fan_out_whose_intent_is_on_disk_but_a_shard_has_no_copy_is_completed_at_start(make_server):
    """The state a kill -9 leaves between the intent's fsync and the copies': F and the home
    shard's G on disk, nothing for the other shard's members. The node completes the fan-out
    before serving; the sender's retransmission gets ✓ and nobody gets a second copy."""
    srv = make_server({"offd.shards": 2})
    members = [f"cm{i}" for i in range(8)]
    srv.register("sender", *members)
    with srv.client("sender") as c:
        gid = c.group_create("cut", members)
    for m in members:  # each takes its "created" event now
        with srv.client(m) as c:
            take(c, 1, ("group_event",))
    srv.stop()
    home = shard_of(gid, 2)
    here = [m for m in members if shard_of(m, 2) == home]
    assert here and len(here) < len(members), "the members must live on both shards"
    seq, ts = 1 << 40, int(time.time() * 1000)
    frame = group_frame(gid, "sender", "cut-1", "half fanned out").stamp(seq + 1, ts)
    directory = os.path.join(srv.data_dir, "offd", f"shard-{home:03d}")
    last = max(n for n in os.listdir(directory) if n.startswith("seg-"))
    with open(os.path.join(directory, last), "ab") as f:
        f.write(record.intent(seq, ts, gid, "sender", "cut-1", "half fanned out", members)
                + record.group(seq + 1, ts, gid, "sender", "cut-1", frame, here))
    srv.start()
    assert "completing the fan-out of group" in srv.log()
    with srv.client("sender") as c:
        assert c.send(None, "half fanned out", id="cut-1", group=gid)["type"] == "sent"
    for m in members:
        with srv.client(m, seen=EveryCopy()) as c:
            assert [f["id"] for f in c.drain(0.5) if f["type"] == "msg"] == ["cut-1"], m
