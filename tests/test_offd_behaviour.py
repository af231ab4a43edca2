"""What every offd spool does (whatsup/store/offd/api.py), run against each implementation:
the file spool (real files) and its in-memory twin, as ejabberd runs its suites against
every backend. Recovery, compaction and the record format are the file spool's own
(tests/test_offd.py)."""
import gevent
import pytest

from whatsup.protocol import PRIMARY, Template
from whatsup.store.offd import MemorySpool, QueueFull, Spool, Store

LAPTOP, TABLET = 1, 2


@pytest.fixture(params=["file", "memory"])
def spool(request, tmp_path):
    """A spool whose device sets come from ``spool.linked`` (user -> device ids; primary only
    by default), and which records the ``on_ready`` pokes in ``spool.ready``."""
    linked, ready = {}, []
    devices, on_ready = (lambda user: linked.get(user, (PRIMARY,))), ready.append
    if request.param == "file":
        sp = Spool(str(tmp_path / "offd"), 1 << 20, 100, 30.0, devices=devices, on_ready=on_ready).open()
    else:
        sp = MemorySpool(100, devices=devices, on_ready=on_ready).open()
    sp.linked, sp.ready = linked, ready
    yield sp
    sp.close()


def put(sp, user, n, sender="alice", **kw):
    return [sp.put(user, "msg", {"type": "msg", "body": f"m{i}"}, sender=sender, cid=f"c{i}", **kw)
            for i in range(n)]


def seqs(items):
    return [i.seq for i in items]


def test_both_spools_satisfy_the_store_protocol(spool):
    missing = [name for name in dir(Store) if not name.startswith("_") and not hasattr(spool, name)]
    assert missing == []


def test_items_go_out_in_order_within_the_window_and_the_byte_budget(spool):
    items = put(spool, "bob", 10)
    assert spool.ready == ["bob"] * 10
    assert spool.login("bob", PRIMARY) == 10
    assert seqs(spool.next_batch("bob", PRIMARY, 4)) == seqs(items[:4])
    assert spool.next_batch("bob", PRIMARY, 4) == []  # 4 unacked: the window is full
    assert spool.unacked("bob", PRIMARY) == 4
    one = len(items[0].frame) + 4
    assert seqs(spool.next_batch("bob", PRIMARY, 10, budget=one + 1)) == seqs(items[4:6])


def test_an_ack_only_moves_past_items_the_device_was_sent(spool):
    items = put(spool, "bob", 5)
    spool.next_batch("bob", PRIMARY, 2)
    acked = spool.ack("bob", PRIMARY, items[4].seq)
    assert seqs(acked.items) == seqs(items[:2])
    spool.release(acked)
    assert seqs(spool.items("bob")) == seqs(items[2:])


def test_what_was_sent_and_not_acked_goes_again_after_a_login(spool):
    items = put(spool, "bob", 3)
    spool.next_batch("bob", PRIMARY, 10)
    spool.release(spool.ack("bob", PRIMARY, items[0].seq))
    assert spool.login("bob", PRIMARY) == 2
    assert seqs(spool.next_batch("bob", PRIMARY, 10)) == seqs(items[1:])


def test_acked_items_stay_until_their_receipts_are_released_in_ack_order(spool):
    items = put(spool, "bob", 2)
    spool.next_batch("bob", PRIMARY, 10)
    a1, a2 = spool.ack("bob", PRIMARY, items[0].seq), spool.ack("bob", PRIMARY, items[1].seq)
    spool.release(a2)
    assert seqs(spool.items("bob")) == seqs(items)  # a1's receipts are not stored yet
    spool.release(a1)
    assert spool.items("bob") == [] and spool.queued() == 0 and spool.users() == []


def test_a_full_queue_refuses_messages_but_not_receipts(spool):
    put(spool, "bob", 100)
    with pytest.raises(QueueFull):
        put(spool, "bob", 1)
    spool.put("bob", "receipt", {"type": "receipt"}, force=True)
    assert len(spool.items("bob")) == 101


def test_durability_is_reported_after_the_call_that_queued(spool):
    done = []
    put(spool, "bob", 3, on_durable=done.append)
    assert done == []
    spool.flush()
    gevent.sleep(0)
    assert done == [None] * 3


def test_every_linked_device_gets_every_item_once_and_it_goes_when_all_acked(spool):
    spool.linked["bob"] = (PRIMARY, LAPTOP)
    items = put(spool, "bob", 3)
    assert seqs(spool.next_batch("bob", PRIMARY, 10)) == seqs(items)
    first = spool.ack("bob", PRIMARY, items[-1].seq)
    assert seqs(first.items) == seqs(items)        # ✓✓ at the first device's ack
    spool.release(first)
    assert seqs(spool.items("bob")) == seqs(items)  # the laptop still holds them
    assert spool.delivered("bob", items[0].seq)
    assert spool.login("bob", LAPTOP) == 3
    assert seqs(spool.next_batch("bob", LAPTOP, 10)) == seqs(items)
    second = spool.ack("bob", LAPTOP, items[-1].seq)
    assert not second.items                        # no second ✓✓
    spool.release(second)
    assert spool.items("bob") == []


def test_devices_move_independently_and_the_front_goes_with_the_slowest(spool):
    spool.linked["bob"] = (PRIMARY, LAPTOP, TABLET)
    items = put(spool, "bob", 4)
    for device, upto in ((PRIMARY, 3), (LAPTOP, 1), (TABLET, 2)):
        spool.next_batch("bob", device, 10)
        spool.release(spool.ack("bob", device, items[upto].seq))
    assert seqs(spool.items("bob")) == seqs(items[2:])
    assert [spool.acked_by("bob", d, items[2].seq) for d in (PRIMARY, LAPTOP, TABLET)] == [True, False, True]
    assert spool.acked_by("bob", LAPTOP, items[1].seq)  # gone: every device had it
    assert spool.login("bob", LAPTOP) == 2 and seqs(spool.next_batch("bob", LAPTOP, 10)) == seqs(items[2:])
    assert spool.login("bob", TABLET) == 1 and seqs(spool.next_batch("bob", TABLET, 10)) == seqs(items[3:])


def test_an_unlinked_device_stops_holding_items(spool):
    spool.linked["bob"] = (PRIMARY, LAPTOP)
    items = put(spool, "bob", 2)
    spool.next_batch("bob", PRIMARY, 10)
    spool.release(spool.ack("bob", PRIMARY, items[-1].seq))
    assert len(spool.items("bob")) == 2
    spool.linked["bob"] = (PRIMARY,)
    spool.unlink("bob", LAPTOP)
    assert spool.items("bob") == []


def test_a_device_linked_later_starts_after_the_items_queued_before_it(spool):
    old = put(spool, "bob", 2)
    spool.linked["bob"] = (PRIMARY, LAPTOP)
    spool.link("bob", LAPTOP)
    new = put(spool, "bob", 1)
    assert seqs(spool.next_batch("bob", LAPTOP, 10)) == seqs(new)
    spool.release(spool.ack("bob", LAPTOP, new[0].seq))
    spool.next_batch("bob", PRIMARY, 10)
    spool.release(spool.ack("bob", PRIMARY, new[0].seq))
    assert spool.items("bob") == [] and seqs(old) < seqs(new)


def test_a_group_copy_is_one_item_in_every_members_queue(spool):
    item = spool.put_group(["ann", "bob"], "g1", "dan", "x1", Template({"type": "msg", "body": "hi"}), None)
    assert spool.items("ann") == [item] and spool.items("bob") == [item]
    assert spool.has_copy(("dan", "x1")) and spool.fanouts() == [("dan", "x1")]
    spool.next_batch("ann", PRIMARY, 1)
    spool.release(spool.ack("ann", PRIMARY, item.seq))
    spool.finished(("dan", "x1"))
    assert spool.items("ann") == [] and spool.items("bob") == [item] and spool.fanouts() == []


def test_a_purge_drops_everything_and_a_later_ack_acks_nothing(spool):
    items = put(spool, "bob", 3)
    spool.next_batch("bob", PRIMARY, 10)
    assert seqs(spool.purge("bob")) == seqs(items)
    acked = spool.ack("bob", PRIMARY, items[-1].seq)
    spool.release(acked)
    assert not acked.items and spool.items("bob") == [] and spool.stats()["purged"] == 3


def test_a_direct_item_goes_to_its_device_alone_and_does_not_hold_the_others(spool):
    spool.linked["bob"] = (PRIMARY, LAPTOP)
    bundle = spool.put("bob", "direct", {"type": "history", "bundle": b"x"}, sender="bob", cid=LAPTOP)
    after = put(spool, "bob", 1)[0]
    assert seqs(spool.next_batch("bob", PRIMARY, 10)) == [after.seq]
    spool.release(spool.ack("bob", PRIMARY, after.seq))
    assert seqs(spool.next_batch("bob", LAPTOP, 10)) == [bundle.seq, after.seq]
    spool.release(spool.ack("bob", LAPTOP, after.seq))
    assert spool.items("bob") == []
