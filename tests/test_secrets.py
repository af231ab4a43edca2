"""No password, and no password hash, ever reaches the node's log (docs/RELIABILITY.md, "Secrets").

The crash paths are driven for real: the operator shell makes the frame parser
(or the hasher) fail at a chosen frame, and the crash report the process
table writes is then searched for the passwords the test used.
"""
import pytest

from whatsup import protocol
from whatsup.client import ServerError
from whatsup.observe.logs import REDACTED, Secret, redact
from whatsup.testing import exchange

PATCH_PARSE = """
import whatsup.protocol as p
_parse = p.parse
def parse(frame):
    if frame.get("type") == "ping" and frame.get("ref") == 777:
        raise RuntimeError("injected crash")
    return _parse(frame)
p.parse = parse
"""


def test_a_session_crash_report_holds_no_password_of_the_frames_read_with_it(server):
    secret = "pw-Sekrit-crash-4471"
    with server.shell() as sh:
        out, ok = sh.run(f"exec({PATCH_PARSE!r})")
        assert ok, out
    # one write: the crash comes while the read that carried both passwords is the last message
    data = b"".join(protocol.encode(f) for f in (
        {"type": "hello", "ref": 1, "versions": [1]},
        {"type": "register", "ref": 2, "user": "crasher", "password": secret},
        {"type": "login", "ref": 3, "user": "crasher", "password": secret},
        {"type": "ping", "ref": 777}))
    answers = exchange(server.server, data, expect=4)
    assert [a.get("code", a["type"]) for a in answers] == ["hello", "ok", "ok", "internal"]
    log = server.log()
    assert "crashed handling" in log and "bytes>" in log  # the report is there, the bytes by size
    assert secret not in log


def test_a_hasher_crash_report_holds_neither_the_password_nor_its_hash(server):
    secret = "pw-Sekrit-hasher-9920"
    server.register("hashed")
    with server.client() as c:
        c.register("victim", secret)
    with server.shell() as sh:
        out, ok = sh.run('exec("import whatsup.store.accounts as a\\na.check_password = lambda p, s: 1 / 0")')
        assert ok, out
        stored, ok = sh.run("node.accounts.shard('victim').get('victim')['password']")
        assert ok, stored
    with server.client() as c:  # the session outlives its hasher: an answer, not a closed connection
        with pytest.raises(ServerError) as refused:  # one attempt (login() would retry busy)
            c.request({"type": "login", "user": "victim", "password": secret})
        assert refused.value.frame["code"] == "busy" and refused.value.frame["retry_after"] > 0
        assert c.ping()
    log = server.log()
    assert "ZeroDivisionError" in log
    assert secret not in log
    assert stored.strip().strip("'").split("$")[-1] not in log


def test_redact_hides_secret_frames_and_raw_bytes_and_bounds_nesting():
    frame = {"type": "login", "ref": 3, "user": "u", "password": "hunter22"}
    assert redact(frame) == {"type": "login", "ref": 3, "user": "u", "password": REDACTED}
    assert "hunter22" not in repr(redact(("data", protocol.encode(frame))))
    assert "hunter22" not in repr(redact(("$call", None, ("check", Secret(("hunter22", "h"))))))
    deep = []
    for _ in range(5000):
        deep = [deep]
    assert len(repr(redact(deep))) < 100
