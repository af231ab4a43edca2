"""offd's file spool driven directly: real files, no server (docs/ARCHITECTURE.md, "offd").

What every spool must do is in tests/test_offd_behaviour.py; this is what the file one adds:
recovery, group commit, compaction, expiry, the record format."""
import os
import time

import pytest

from whatsup.routing.dedup import Dedup, digest, digests, unpack_entries
from whatsup.store.offd import Offd, ShardMismatch, Spool
from whatsup.store.offd import record
from whatsup.store.offd.memory import MemorySpool
from whatsup.store.offd.spool import IDS, PACE, SEGMENT, SLICE, Pace
from whatsup.protocol import PRIMARY, Template, pack
from whatsup.runtime import ProcessTable
from whatsup.testing import FakeClock


def spool(path, **kw):
    opts = {"segment_bytes": 1 << 20, "max_queue": 1000, "expiry_days": 30.0, **kw}
    return Spool(str(path), **opts).open()


def put(sp, user, n, sender="alice", durable=None):
    return [sp.put(user, "msg", {"type": "msg", "body": f"m{i}"}, sender=sender, cid=f"c{i}",
                   on_durable=durable) for i in range(n)]


def bodies(sp, user):
    import msgpack
    return [msgpack.unpackb(i.frame)["body"] for i in sp.items(user)]


def deliver(sp, user, n, device=PRIMARY):
    """Send ``n`` items to ``device`` and have it ack the last one; returns the items it got."""
    items = sp.next_batch(user, device, n)
    sp.release(sp.ack(user, device, items[-1].seq))
    return items


def test_items_survive_a_reopen_in_order_and_acked_ones_are_gone(tmp_path):
    sp = spool(tmp_path)
    put(sp, "bob", 10)
    sp.flush()  # a device is only sent durable items
    deliver(sp, "bob", 4)
    sp.close()
    sp = spool(tmp_path)
    assert bodies(sp, "bob") == [f"m{i}" for i in range(4, 10)]
    assert {h for _, h, _, _ in sp.take_recovered()["alice"]} >= {digest("bob", f"c{i}") for i in range(10)}
    sp.close()


def test_durability_callbacks_fire_after_the_group_commit(tmp_path):
    sp = spool(tmp_path)
    done = []
    put(sp, "bob", 50, durable=done.append)
    assert done == []            # nothing is durable before the writer ran
    sp.flush()
    assert done == [None] * 50
    assert sp.stats()["commit_batches"] <= 3  # 50 puts shared a few fsyncs, not 50
    sp.close()


def test_a_busy_shard_commits_at_most_once_per_commit_interval_and_an_idle_one_at_once(tmp_path):
    import gevent
    sp = spool(tmp_path, commit_interval=1.0)
    done = []
    put(sp, "bob", 1, durable=done.append)
    assert sp.flush(timeout=0.5) and done == [None]  # idle: no wait for the interval
    for i in range(10):  # each alone in its loop pass, the writer idle in between
        put(sp, "carol", 1, durable=done.append)
        gevent.sleep(0.005)
    assert sp.stats()["commit_batches"] == 1  # the ten wait for the interval to run out...
    sp.close()  # ...and closing still writes them
    assert done == [None] * 11
    sp = spool(tmp_path)
    assert bodies(sp, "carol") == ["m0"] * 10
    sp.close()


def test_a_device_that_acked_past_the_others_keeps_its_place_through_compaction_and_a_reopen(tmp_path):
    laptop, devices = 1, (lambda user: (PRIMARY, 1))
    sp = spool(tmp_path, segment_bytes=4096, devices=devices)
    items = put(sp, "bob", 5)
    sp.flush()
    deliver(sp, "bob", 3, device=laptop)      # the laptop acked 3, the phone nothing
    put(sp, "zed", 200)                       # rolls segments: the cursor's record is compacted forward
    sp.maintain()
    sp.flush()
    sp.close()
    sp = spool(tmp_path, segment_bytes=4096, devices=devices)
    assert [i.seq for i in sp.items("bob")] == [i.seq for i in items]
    assert [i.seq for i in sp.next_batch("bob", laptop, 10)] == [i.seq for i in items[3:]]
    assert len(sp.next_batch("bob", PRIMARY, 10)) == 5
    assert sp.delivered("bob", items[2].seq) and not sp.delivered("bob", items[3].seq)
    sp.close()


def test_a_direct_item_keeps_its_device_through_a_reopen(tmp_path):
    devices = (lambda user: (PRIMARY, 1))
    sp = spool(tmp_path, devices=devices)
    bundle = sp.put("bob", "direct", {"type": "history", "bundle": b"x"}, sender="bob", cid=1)
    sp.close()
    sp = spool(tmp_path, devices=devices)
    assert sp.next_batch("bob", PRIMARY, 10) == [] and [i.seq for i in sp.next_batch("bob", 1, 10)] == [bundle.seq]
    assert sp.take_recovered() == {}  # not a message id: the dedup window does not hold it
    sp.close()


def test_a_torn_last_record_is_cut_and_everything_before_it_kept(tmp_path):
    sp = spool(tmp_path)
    put(sp, "bob", 3)
    sp.close()
    seg = sorted(os.listdir(tmp_path))[-1]
    path = tmp_path / seg
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    sp = spool(tmp_path)
    assert bodies(sp, "bob") == ["m0", "m1"]
    assert sp.stats()["torn_bytes"] > 0
    sp.close()


def test_seq_never_goes_backwards_even_after_everything_was_acked_and_compacted(tmp_path):
    sp = spool(tmp_path, segment_bytes=4096)
    last = put(sp, "bob", 200)[-1].seq
    sp.flush()
    deliver(sp, "bob", 200)
    sp.maintain()
    sp.flush()
    sp.close()
    sp = spool(tmp_path, segment_bytes=4096)
    assert put(sp, "bob", 1)[0].seq > last
    sp.close()


def test_compaction_keeps_live_items_and_shrinks_the_files(tmp_path):
    sp = spool(tmp_path, segment_bytes=4096)
    put(sp, "carol", 3, sender="dave")        # stays queued: must survive compaction
    put(sp, "bob", 400)
    sp.flush()
    deliver(sp, "bob", 400)
    sp.flush()
    before = sum(f.stat().st_size for f in tmp_path.iterdir())
    sp.maintain()
    sp.flush()
    sp._pool.apply(lambda: None)             # the unlink runs on the writer thread
    after = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert after < before / 4
    sp.close()
    sp = spool(tmp_path, segment_bytes=4096)
    assert bodies(sp, "carol") == ["m0", "m1", "m2"] and sp.items("bob") == []
    sp.close()


def test_expired_items_are_dropped(tmp_path):
    sp = spool(tmp_path, expiry_days=1e-9)
    put(sp, "bob", 3)
    time.sleep(0.01)  # the items' millisecond stamps are now older than the 0.09 ms expiry
    sp.maintain()
    assert sp.items("bob") == [] and sp.stats()["expired"] == 3
    sp.close()


def test_recovered_items_expire_too(tmp_path):
    first = spool(tmp_path)
    put(first, "bob", 2)
    first.close()
    time.sleep(0.1)
    sp = spool(tmp_path, expiry_days=0.03 / 86400)  # 30 ms: recovery queues them again, stamped
    sp.maintain()                                     # 100 ms ago: due, though recovered just now
    assert sp.items("bob") == [] and sp.stats()["expired"] == 2
    sp.close()


def test_an_expiry_pass_visits_only_the_queues_whose_front_is_due():
    clock = FakeClock(now=1_000_000.0)
    sp = MemorySpool(1000, clock=clock)
    sp.put("old", "msg", {"type": "msg", "body": "old"})
    clock.now += 3600
    for i in range(500):
        sp.put(f"u{i}", "msg", {"type": "msg", "body": "new"})
    sp.put("old", "msg", {"type": "msg", "body": "newer"})
    cutoff = (clock.now - 60) * 1000
    assert [(user, len(gone)) for user, gone in sp.expire(cutoff)] == [("old", 1)]
    assert [i.seq for i in sp.items("old")] == [502]
    assert list(sp.expire(cutoff)) == []  # nothing due: nothing visited
    clock.now += 3600
    assert len(list(sp.expire((clock.now - 60) * 1000))) == 501 and sp.queued() == 0


def test_offd_refuses_a_data_dir_written_with_another_shard_count(tmp_path):
    Offd(ProcessTable(), str(tmp_path), 2, 1 << 20, 10, 30.0).check()
    with pytest.raises(ShardMismatch, match="has 2 shards but offd.shards says 3; reshard it with whatsup-reshard"):
        Offd(ProcessTable(), str(tmp_path), 3, 1 << 20, 10, 30.0).check()


def test_segment_names_sort_in_write_order():
    assert SEGMENT.format(9) < SEGMENT.format(10)


def test_compaction_moves_live_data_once_not_on_every_pass(tmp_path):
    sp = spool(tmp_path, segment_bytes=4096)
    put(sp, "carol", 100)                     # ~2.5 segments of live items, never acked
    put(sp, "bob", 200)
    sp.flush()
    deliver(sp, "bob", 200)
    sp.maintain()
    sp.flush()
    moved = sp.stats()["compacted_items"]
    assert moved >= 100
    for _ in range(3):                        # no new traffic: nothing to move again
        sp.maintain()
        sp.flush()
    assert sp.stats()["compacted_items"] == moved
    sp.close()


def windowed(path, window, **kw):
    """A spool whose compaction carries ids from a dedup window of ``window`` ids per sender."""
    d = Dedup(window)
    return spool(path, carry=d.pick, **kw), d


def sent(sp, d, user, cids, sender="alice"):
    """Messages the router saw made durable: each id enters the window, anchored where its record is."""
    items = [sp.put(user, "msg", {"type": "msg", "body": "x" * 50}, sender=sender, cid=c) for c in cids]
    sp.flush()
    for item, cid in zip(items, cids):
        d.add(sender, digest(user, cid), item.ts, item.seq)
        sp.anchor(item.seg, sender, digest(user, cid))


def refill(sp, d):
    """What the router does with what recovery found: the window again, anchored where it was found."""
    found = sp.take_recovered()
    for sender, entries in found.items():
        for ts, h, sid, seq in entries:
            d.add(sender, h, ts, seq)
            sp.anchor(sid, sender, h)
    return {sender: {h for _, h, _, _ in entries} for sender, entries in found.items()}


def ids_files(path):
    return sorted(n for n in os.listdir(path) if n.startswith("ids-"))


def test_compaction_writes_an_id_to_the_ids_file_once_not_at_every_pass_and_a_reopen_keeps_the_window(tmp_path):
    sp, d = windowed(tmp_path, 100, segment_bytes=4096)
    sent(sp, d, "bob", [f"c{i}" for i in range(20)])
    deliver(sp, "bob", 20)                    # delivered and acked: only carried ids keep them known
    for round_ in range(4):                   # other traffic rolls the segments; each pass compacts
        put(sp, "carol", 60, sender="zed")
        sp.flush()
        deliver(sp, "carol", 60)
        sp.maintain()
        sp.flush()
    assert sp.stats()["compactions"] >= 3
    assert sp.stats()["carried_ids"] == 20    # once each, however many passes
    assert not any(SEGMENT.format(1) == n for n in os.listdir(tmp_path)) and ids_files(tmp_path)
    sp.close()
    sp, d = windowed(tmp_path, 100, segment_bytes=4096)
    assert refill(sp, d)["alice"] == {digest("bob", f"c{i}") for i in range(20)}
    sp.close()


def test_the_ids_file_is_rewritten_with_only_the_ids_still_in_their_window(tmp_path):
    senders = [f"s{i}" for i in range(10)]
    sp, d = windowed(tmp_path, 8, segment_bytes=512)
    for batch in range(3):                    # each batch pushes the previous one out of the windows
        for sender in senders:
            sent(sp, d, "bob", [f"{sender}-{batch}-{i}" for i in range(8)], sender=sender)
        deliver(sp, "bob", 80)
        put(sp, "carol", 10, sender="zed")    # rolls the active segment, so the batch is compacted
        sp.flush()
        sp.maintain()
        sp.flush()
    stats = sp.stats()
    assert stats["carried_ids"] >= 3 * 80 and stats["ids_rewrites"] >= 2
    sp.close()
    assert len(ids_files(tmp_path)) == 1      # the rewritten ones are unlinked
    data = (tmp_path / ids_files(tmp_path)[0]).read_bytes()
    kept = {rec[1]: digests(rec[2]) for rec in record.scan(data)[0]}
    newest = {s: {digest("bob", f"{s}-2-{i}") for i in range(8)} for s in senders}
    assert {s: {hs[i:i + 8] for i in range(0, len(hs), 8)} for s, hs in kept.items()} == newest
    sp, d = windowed(tmp_path, 8, segment_bytes=512)
    assert {s: hs for s, hs in refill(sp, d).items() if s != "zed"} == newest  # zed's items are still queued
    sp.close()


def test_ids_files_a_crash_left_mid_rewrite_are_read_then_rewritten_into_one(tmp_path):
    def entries(cids):
        d = Dedup(10)
        for cid in cids:
            d.add("alice", digest("bob", cid), ord(cid))  # sent in the order of their names
        return d.pick("alice", b"".join(digest("bob", cid) for cid in cids))
    (tmp_path / IDS.format(1)).write_bytes(record.carried("alice", entries("abc")))
    (tmp_path / IDS.format(2)).write_bytes(record.carried("alice", entries("bcd")))  # its rewrite, half done
    sp, d = windowed(tmp_path, 2, segment_bytes=4096)
    assert refill(sp, d)["alice"] == {digest("bob", c) for c in "abcd"}
    sp.maintain()                              # the window (2 ids) kept c and d
    sp.close()
    assert ids_files(tmp_path) == [IDS.format(3)]
    found = record.scan((tmp_path / IDS.format(3)).read_bytes())[0]
    assert sorted(h for rec in found for h, _, _ in unpack_entries(rec[2])) == sorted(
        digest("bob", c) for c in "cd")


def test_a_group_copy_is_one_item_in_every_members_queue_and_a_reopen_keeps_it_for_who_did_not_ack(tmp_path):
    sp = spool(tmp_path, segment_bytes=4096)
    item = sp.put_group(["ann", "bob", "cid"], "g1", "dan", "x1", Template({"type": "msg", "body": "hi"}), None)
    sp.flush()
    deliver(sp, "ann", 1)
    sp.finished(("dan", "x1"))
    put(sp, "zed", 200)                       # rolls segments: the G record is compacted forward
    sp.maintain()
    sp.flush()
    sp.close()
    sp = spool(tmp_path, segment_bytes=4096)
    assert sp.items("ann") == []
    copies = [sp.items(u)[0] for u in ("bob", "cid")]
    assert copies[0] is copies[1] and copies[0].seq == item.seq and copies[0].group == ("g1", ["bob", "cid"])
    sp.close()


def test_a_fan_out_intent_without_its_done_record_is_incomplete_after_a_reopen(tmp_path):
    sp = spool(tmp_path)
    sp.intent("g1", "dan", "a", "body a", ["ann", "bob"], None)
    sp.intent("g1", "dan", "b", "body b", ["ann", "bob"], None)
    sp.done("dan", "a", None)
    sp.close()
    sp = spool(tmp_path)
    assert list(sp.incomplete) == [("dan", "b")]
    assert sp.incomplete[("dan", "b")].group == ("g1", ["ann", "bob"])
    sp.close()


def test_a_data_dir_in_the_previous_format_recovers_its_items_and_dedup_ids(tmp_path):
    """Nodes before the G/F/E/H records wrote group copies as P records and carried ids as I."""
    old = [record.base(0),
           record.put("ann", 1, 5, "gmsg", "dan", "g-1", pack({"type": "msg", "group": "g9", "seq": 1})),
           record.put("ann", 2, 6, "msg", "dan", "m-1", pack({"type": "msg", "seq": 2})),
           record.encode(["I", "eve", "ann", [["old-id", 0, 4]]])]
    (tmp_path / SEGMENT.format(1)).write_bytes(b"".join(old))
    sp = spool(tmp_path)
    assert [(i.seq, i.kind, i.cid) for i in sp.items("ann")] == [(1, "gmsg", "g-1"), (2, "msg", "m-1")]
    recovered = sp.take_recovered()
    assert {h for _, h, _, _ in recovered["dan"]} == {digest("g9", "g-1"), digest("ann", "m-1")}
    assert [h for _, h, _, _ in recovered["eve"]] == [digest("ann", "old-id")]
    sp.close()


def test_maintenance_yields_after_a_slice_of_steps_or_of_time_whichever_comes_first():
    now, yields = [0.0], []
    pace = Pace(clock=lambda: now[0], pause=lambda: yields.append(1))
    for _ in range(SLICE - 1):
        pace.step()  # cheap steps, no time passes
    assert yields == []
    pace.step()
    assert len(yields) == 1  # a full slice
    pace.step()
    now[0] += PACE  # one dear step (a group copy naming every member; a busy machine)
    pace.step()
    assert len(yields) == 2  # yielded after 2 steps, not SLICE
