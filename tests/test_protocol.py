"""The codec and the schemas, without sockets (docs/PROTOCOL.md, "Framing" and "Frames")."""
import itertools
import json
import re
import struct

import msgpack
import pytest

from whatsup import protocol
from whatsup.protocol import Code, FrameDecoder, FramingError, ProtocolError


def test_frames_split_across_reads_are_reassembled():
    data = protocol.encode({"type": "ping", "ref": 1}) + protocol.encode({"type": "ping", "ref": 2})
    dec = FrameDecoder(1024)
    out = []
    for i in range(len(data)):
        out += dec.feed(data[i:i + 1])
    assert out == [{"type": "ping", "ref": 1}, {"type": "ping", "ref": 2}]


def test_zero_length_and_oversized_frames_are_framing_errors_after_the_frames_before_them():
    ping = protocol.encode({"type": "ping"})
    for bad, code in ((b"\0\0\0\0", Code.BAD_FRAME), (struct.pack(">I", 1025), Code.FRAME_TOO_LARGE)):
        dec = FrameDecoder(1024)
        first, error = dec.feed(ping + bad + ping)
        assert first == {"type": "ping"}
        assert isinstance(error, FramingError) and error.code == code
        assert dec.feed(ping) == [error]  # the stream stays lost


def test_undecodable_bodies_cost_an_error_not_the_stream():
    bad = b"\xc1"                              # never used in msgpack
    arr = msgpack.packb([1, 2])
    trailing = msgpack.packb({"type": "ping"}) + b"\x01"
    dec = FrameDecoder(1024)
    out = dec.feed(b"".join(struct.pack(">I", len(b)) + b for b in (bad, arr, trailing))
                   + protocol.encode({"type": "ping"}))
    assert [o.code for o in out[:3]] == [Code.BAD_MSGPACK, Code.NOT_A_MAP, Code.BAD_MSGPACK]
    assert out[3] == {"type": "ping"}


def test_a_tiny_frame_cannot_claim_a_huge_array():
    # 0xdd = array32 with 2^32-1 elements, in a 5-byte body: must fail fast, not allocate.
    body = b"\xdd\xff\xff\xff\xff"
    with pytest.raises(ProtocolError) as e:
        protocol.unpack(body)
    assert e.value.code == Code.BAD_MSGPACK


@pytest.mark.parametrize("frame, code", [
    ({"ref": 1}, Code.UNKNOWN_TYPE),
    ({"type": "launch", "ref": 1}, Code.UNKNOWN_TYPE),
    ({"type": 7}, Code.UNKNOWN_TYPE),
    ({"type": "msg", "ref": 1, "id": "a", "to": "bob"}, Code.BAD_FIELD),
    ({"type": "msg", "ref": 1, "id": "a", "to": "bob", "body": b"bytes"}, Code.BAD_FIELD),
    ({"type": "msg", "ref": 1, "id": "x" * 65, "to": "bob", "body": "hi"}, Code.BAD_FIELD),
    ({"type": "ack", "seq": -1}, Code.BAD_FIELD),
    ({"type": "ack", "seq": True}, Code.BAD_FIELD),
    ({"type": "read", "ref": 1, "to": "bob", "ids": []}, Code.BAD_FIELD),
    ({"type": "hello", "ref": 1, "versions": "1"}, Code.BAD_FIELD),
])
def test_schema_violations_have_stable_codes(frame, code):
    with pytest.raises(ProtocolError) as e:
        protocol.parse(frame)
    assert e.value.code == code
    assert e.value.ref == frame.get("ref")


def test_a_claimed_sender_is_not_part_of_any_schema():
    ftype, frame = protocol.parse({"type": "msg", "ref": 1, "id": "a", "to": "bob", "body": "hi",
                                   "from": "mallory"})
    assert ftype == "msg" and "from" not in protocol.SCHEMAS["msg"]


def test_the_worked_example_in_the_protocol_doc_is_true():
    with open("docs/PROTOCOL.md") as f:
        doc = f.read()
    example = doc[doc.index("## A worked example"):]
    start = example.index("```\n") + 4
    example = example[start:example.index("\n```", start)]
    shown = [t for line in example.splitlines()  # the leading hex bytes of each line
             for t in itertools.takewhile(lambda t: re.fullmatch(r"[0-9a-f]{2}", t), line.split())]
    assert " ".join(shown) == protocol.encode({"type": "hello", "ref": 1, "versions": [1]}).hex(" ")
    client_frames = [json.loads(line[3:]) for line in doc.splitlines() if line.startswith("C: {")]
    assert len(client_frames) >= 10
    for frame in client_frames:  # every frame a client sends in the examples passes the schemas
        assert protocol.parse(frame)[0] == frame["type"]
    for name, code in vars(Code).items():
        if name.isupper():
            assert f"`{code}`" in doc, f"error code {code} is not documented"


def test_a_template_stamps_the_same_frame_as_packing_it_whole():
    frame = {"type": "msg", "from": "alice", "group": "g1", "id": "c1", "body": "hé" * 40}
    for seq, ts in ((1, 1795432419655), (2**40, 0)):
        stamped = protocol.Template(frame).stamp(seq, ts)
        assert protocol.unpack(stamped) == {**frame, "seq": seq, "ts": ts}
