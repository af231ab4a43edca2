"""The I/O-free parts of groups, presence and blocking: schemas, limiter, durability counting."""
import pytest

from whatsup import protocol
from whatsup.groups import AllDurable
from whatsup.protocol import Code, ProtocolError
from whatsup.presence import RateLimit


def test_typing_rate_limit_allows_the_limit_per_window_then_refuses_until_the_next():
    limit = RateLimit(3, per=1.0)
    assert [limit.allow(t) for t in (0.0, 0.1, 0.2, 0.3, 0.9)] == [True, True, True, False, False]
    assert [limit.allow(t) for t in (1.0, 1.5, 1.6, 1.7)] == [True, True, True, False]


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
