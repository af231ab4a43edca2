"""The I/O-free parts of groups, presence and blocking: schemas, durability counting (the typing
limit is the generic token bucket: tests/test_ratelimit.py)."""
import pytest

from whatsup import protocol
from whatsup.store.offd import ShardDown
from whatsup.protocol import Code, ProtocolError
from whatsup.routing.router import AllDurable, Router


def test_all_durable_fires_once_after_every_expected_callback_and_the_issuer_release():
    fired = []
    done = AllDurable(fired.append)
    callbacks = [done.expect() for _ in range(3)]
    callbacks[0](None)
    callbacks[1](OSError("disk full"))
    callbacks[2](None)
    assert fired == []  # the issuer still holds it: more puts may follow
    done.release()
    assert len(fired) == 1 and isinstance(fired[0], OSError)


def test_all_durable_with_nothing_expected_fires_on_release():
    fired = []
    AllDurable(fired.append).release()
    assert fired == [None]


@pytest.mark.parametrize("frame", [
    {"type": "msg", "ref": 1, "id": "a", "body": "hi"},                              # neither
    {"type": "msg", "ref": 1, "id": "a", "to": "bob", "group": "g1", "body": "hi"},  # both
    {"type": "typing", "state": "typing"},
    {"type": "typing", "to": "bob", "state": "shouting"},
    {"type": "group_create", "ref": 1, "name": ""},
    {"type": "group_create", "ref": 1, "name": "x", "members": "bob"},
    {"type": "group_add", "ref": 1, "group": "g1", "members": []},
    {"type": "group_admin", "ref": 1, "group": "g1", "user": "bob", "admin": 1},
    {"type": "privacy", "ref": 1, "last_seen": "contacts"},
    {"type": "block", "ref": 1},
])
def test_new_frames_with_bad_fields_are_bad_field(frame):
    with pytest.raises(ProtocolError) as e:
        protocol.parse(frame)
    assert e.value.code == Code.BAD_FIELD


@pytest.mark.parametrize("frame", [
    {"type": "msg", "ref": 1, "id": "a", "group": "g1", "body": "hi"},
    {"type": "read", "ref": 1, "to": "bob", "ids": ["a"], "group": "g1"},
    {"type": "group_create", "ref": 1, "name": "x"},
    {"type": "group_admin", "ref": 1, "group": "g1", "user": "bob", "admin": False},
    {"type": "group_list", "ref": 1},
    {"type": "presence_sub", "ref": 1, "user": "bob"},
    {"type": "typing", "group": "g1", "state": "recording"},
    {"type": "block_list", "ref": 1},
])
def test_new_frames_parse(frame):
    assert protocol.parse(frame) == (frame["type"], frame)


class _Offd:
    """Spools by user; the users in ``down`` live on a shard that is restarting."""

    def __init__(self, down):
        self.down, self.waits = down, 0

    def spool(self, user):
        if user in self.down:
            self.waits += 1  # the real one waits runtime.restart_wait here
            raise ShardDown(user)
        return f"spool-of-{user}"

    def current(self, user):
        return None if user in self.down else f"spool-of-{user}"


def test_a_fan_out_waits_for_a_down_offd_shard_once_and_reports_its_members_lost():
    offd = _Offd(down={"b", "d"})
    router = Router(None, None, offd, None, None, dedup_window=16, timers=None)
    parts, lost = router.partition(["a", "b", "c", "d", "e"])
    assert parts == {"spool-of-a": ["a"], "spool-of-c": ["c"], "spool-of-e": ["e"]}
    assert [user for user, _ in lost] == ["b", "d"] and offd.waits == 1
