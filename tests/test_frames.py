"""The frame corpus (tests/frames/): raw wire bytes in, the documented answers out."""
import glob
import os

import pytest

from whatsup.testing import ServerProcess, exchange, undocumented

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frames")
CASES = sorted(os.path.relpath(p, CORPUS)[:-4] for p in glob.glob(os.path.join(CORPUS, "*", "*.bin")))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("frames")).start()
    srv.register("alice", "bob")
    yield srv
    srv.kill()


def answer(frame):
    return f"error {frame['code']}" if frame["type"] == "error" else frame["type"]


@pytest.mark.parametrize("case", CASES)
def test_the_server_answers_each_corpus_input_as_documented(node, case):
    with open(os.path.join(CORPUS, case + ".bin"), "rb") as f:
        data = f.read()
    with open(os.path.join(CORPUS, case + ".expect")) as f:
        expected = f.read().split("\n")[:-1]
    frames = exchange(node.server, data, expect=len(expected))
    assert [undocumented(f) for f in frames if undocumented(f)] == []
    assert [answer(f) for f in frames] == expected


def test_the_corpus_covers_every_bad_input_of_the_protocol():
    invalid = {c.split("/")[1] for c in CASES if c.startswith("invalid/")}
    for needed in ("zero_length", "length_over_max_frame", "bad_msgpack", "not_a_map_array", "unknown_type",
                   "message_missing_to", "message_body_not_a_string", "message_before_login",
                   "unknown_recipient", "wrong_password", "username_taken", "empty_body",
                   "body_over_max_body"):
        assert needed in invalid
    assert "valid/from_claiming_another_user_is_ignored" in CASES


def test_a_from_field_claiming_another_user_is_ignored(node):
    with node.client("bob") as bob:
        bob.drain(0.3)
        with node.client("alice") as alice:
            sent = alice.request({"type": "msg", "id": "spoof", "to": "bob", "body": "hi", "from": "bob"})
            assert sent["type"] == "sent"
        got = [f for f in bob.drain(1.0) if f.get("id") == "spoof"]
        assert [f["from"] for f in got] == ["alice"]
    assert "Traceback" not in node.log()
