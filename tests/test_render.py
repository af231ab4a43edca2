"""The CLI's one-line rendering of pushed frames (pure)."""
from whatsup.cli.render import describe

TS = 1796039647437


def test_what_you_sent_or_read_on_another_device_reads_as_yours_not_as_a_message_from_you_to_you():
    sent = {"type": "msg", "from": "bob", "to": "alice", "id": "s1", "body": "hi", "device": 1, "ts": TS}
    assert describe(sent, "bob").endswith("] you to alice on device 1: hi")
    read = {"type": "receipt", "from": "bob", "status": "read", "ids": ["a1", "a2"], "to": "alice", "device": 0, "ts": TS}
    assert describe(read, "bob").endswith("] you read alice's on device 0: a1, a2")
    group = {"type": "msg", "from": "bob", "group": "g1", "id": "s2", "body": "all", "ts": TS}
    assert describe(group, "bob").endswith("] you in g1: all")


def test_other_peoples_messages_and_receipts_read_as_before():
    assert describe({"type": "msg", "from": "alice", "id": "a1", "body": "hi", "ts": TS}, "bob").endswith("] alice: hi")
    receipt = {"type": "receipt", "from": "alice", "status": "read", "ids": ["s1"], "ts": TS}
    assert describe(receipt, "bob").endswith("] ✓✓ read by alice: s1")
    assert describe({"type": "msg", "from": "alice", "id": "a1", "body": "hi"}) == "alice: hi"
