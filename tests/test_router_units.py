"""The router driven directly over in-memory spools (no node, no socket): the crash states a
kill -9 makes too rarely for an end-to-end test to reach on purpose."""
import gevent

from whatsup.protocol import unpack
from whatsup.routing.dedup import digest
from whatsup.routing.router import Router
from whatsup.store.offd.memory import MemorySpool

DEVICES = {"alice": (0, 1, 2), "bob": (0,)}


class Accounts:
    @staticmethod
    def exists(user):
        return user in DEVICES

    @staticmethod
    def devices(user):
        return DEVICES[user]


class Blocks:
    @staticmethod
    def blocks(user, other):
        return False


class Sessions:
    @staticmethod
    def pids(user):
        return []


class Offd:
    """Each user on a shard of their own, as alice and bob may well be."""

    def __init__(self):
        self.spools = {u: MemorySpool(100, devices=DEVICES.get) for u in DEVICES}

    def spool(self, user):
        return self.spools[user]

    current = spool


def test_a_retransmission_queues_again_the_self_copy_a_crash_lost_and_its_tick_waits_for_it():
    """alice (three devices) sent m1 to bob; a kill -9 came between the fsync of bob's shard (the
    message) and of alice's (her copy for her other devices): recovery put m1 back in bob's queue
    and in alice's dedup window, and her copy is gone. Her phone, never ✓'d, sends m1 again: it
    gets ✓ once her copy is queued again, and bob does not get m1 twice (chaos found it: her
    companions never showed m1)."""
    offd = Offd()
    router = Router(None, Sessions(), offd, Accounts(), Blocks(), dedup_window=16, timers=None)
    replies = []
    router.reply = lambda pid, frame: replies.append((pid, frame))
    item = offd.spools["bob"].put("bob", "msg", {"type": "msg", "from": "alice", "id": "m1", "body": "hi"},
                                  sender="alice", cid="m1")
    router.dedup.add("alice", digest("bob", "m1"), item.ts, item.seq)  # what recovery does

    router.message("alice", "phone", 7, "m1", "bob", "hi", device=0)
    assert replies == []  # not before her copy is durable
    offd.spools["alice"].flush()
    assert replies == [("phone", {"type": "sent", "ref": 7, "id": "m1", "ts": item.ts})]
    (copy,) = offd.spools["alice"].items("alice")
    frame = unpack(copy.frame)
    assert (copy.kind, frame["to"], frame["id"], frame["device"]) == ("self", "bob", "m1", 0)
    assert len(offd.spools["bob"].items("bob")) == 1


def test_a_retransmission_of_a_user_with_one_device_is_answered_at_once():
    offd = Offd()
    router = Router(None, Sessions(), offd, Accounts(), Blocks(), dedup_window=16, timers=None)
    replies = []
    router.reply = lambda pid, frame: replies.append(frame["type"])
    router.dedup.add("bob", digest("alice", "b1"), 1000)
    router.message("bob", "pid", 1, "b1", "alice", "yo")
    assert replies == ["sent"]
    gevent.sleep(0)
    assert offd.spools["alice"].items("alice") == [] and offd.spools["bob"].items("bob") == []
