"""Property-based fuzzing of the wire protocol against a real node (hypothesis).

Random bytes, valid frames with bytes flipped, frames cut short, and maps of
random fields and types, optionally after a valid hello and login. Whatever
arrives, the node answers only with documented frames and error codes, a
connection survives every bad frame that does not break the framing (a ping
sent after it is answered), the node never logs a traceback, and two
bystanders keep chatting throughout. ops/fuzz.py is the 100,000-frame run.
"""
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whatsup import protocol
from whatsup.testing import FUZZ_SEEDS, Bystander, ServerProcess, exchange, splits_cleanly, undocumented

HELLO = protocol.encode({"type": "hello", "ref": 1, "versions": [1]})
LOGIN = HELLO + protocol.encode({"type": "login", "ref": 2, "user": "fuzzer", "password": "pw-fuzzer"})
PING = protocol.encode({"type": "ping", "ref": 4242})
VALID = FUZZ_SEEDS
MAX_FRAME = 65536
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)

@st.composite
def flipped(draw):
    data = bytearray(protocol.encode(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)

@st.composite
def truncated(draw):
    data = protocol.encode(draw(st.sampled_from(VALID)))
    return data[:draw(st.integers(0, len(data) - 1))]

@st.composite
def random_map(draw):
    frame = dict(draw(st.sampled_from(VALID)))
    for key in draw(st.lists(st.sampled_from(sorted({k for f in VALID for k in f})), max_size=3)):
        frame[key] = draw(values)
    return protocol.encode(frame)

frames = st.one_of(st.binary(max_size=48), flipped(), truncated(), random_map(),
                   st.builds(protocol.frame_bytes, st.binary(min_size=1, max_size=40)))
payloads = st.tuples(st.sampled_from([b"", HELLO, LOGIN]), st.lists(frames, min_size=1, max_size=6))

@pytest.fixture(scope="module")
def node(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz")).start()
    srv.register("fuzzer", "sink", "alice", "bob")
    bystander = Bystander(srv, "alice", "bob")
    bystander.start()
    yield srv
    exchanged, failures = bystander.stop()
    srv.kill()
    assert failures == [] and exchanged > 0

@settings(max_examples=800, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=payloads)
def test_any_bytes_get_documented_answers_and_bad_frames_cost_at_most_the_connection(node, payload):
    prefix, parts = payload
    data = prefix + b"".join(parts)
    clean = splits_cleanly(data, MAX_FRAME)
    answers = exchange(node.server, data + PING if clean else data)
    assert [undocumented(f) for f in answers if undocumented(f)] == []
    closing = [f["code"] for f in answers if f.get("code") in protocol.CLOSING]
    if clean and not closing:
        assert {"type": "pong", "ref": 4242} in answers
    assert node.proc.poll() is None

def test_the_fuzzed_node_logged_no_unhandled_exception(node):
    """Runs after the property above (file order), on the same node."""
    assert "Traceback" not in node.log() and node.proc.poll() is None


def test_the_ops_fuzz_run_passes_at_ci_size(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "ops", "fuzz.py"), "--frames", "10000",
                          "--seed", "7", "--dir", str(tmp_path / "fuzz")],
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tracebacks in the node log 0" in run.stdout
