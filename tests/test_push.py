"""Push notifications: the schedule with a fake clock, and a real node POSTing to a real HTTP
receiver on loopback (coalescing, no content by default, retries, a hanging gateway)."""
import http.server
import json
import threading
import time

import pytest

from whatsup.users.push import Schedule


def test_a_burst_coalesces_failures_back_off_and_the_breaker_opens_then_probes():
    s = Schedule(delay=1.0, backoff=2.0, backoff_max=5.0, retries=3, breaker_failures=2, breaker_cooldown=10.0)
    assert s.queued("bob", 0.0) and not s.queued("bob", 0.5)  # the second item joins the first
    assert s.queued("carol", 0.2)
    assert s.due(0.9) == [] and s.next_wake() == 1.0
    assert s.due(1.2) == ["bob", "carol"]
    assert s.failed("bob", 1.2)                       # retry in 2 s
    assert s.pending["bob"][0] == pytest.approx(3.2)
    s.take("carol")
    assert not s.sent("carol", 1.3)                   # a success closes the count of failures
    assert s.failures == 0
    assert s.failed("bob", 3.2) and s.pending["bob"][0] == pytest.approx(7.2)  # 4 s
    assert s.failed("bob", 7.2) and s.pending["bob"][0] == pytest.approx(12.2)  # capped at 5 s
    assert s.open_until == pytest.approx(17.2)       # two failures in a row: open
    s.queued("dave", 8.0)
    assert s.due(12.5) == [] and s.blocked(12.5) and s.next_wake() == pytest.approx(17.2)
    assert len(s.due(17.3)) == 1                       # half-open: one probe
    assert not s.failed("bob", 17.3) and "bob" not in s.pending  # 3 retries done: dropped
    assert s.blocked(17.4)
    s.take("dave")
    s.queued("dave", 17.5)                             # while it was on its way
    assert s.sent("dave", 17.6)                        # so it is due again, a delay later
    assert not s.blocked(17.6) and s.pending == {"dave": [18.6, 0, False]}


def test_a_wake_takes_what_is_due_in_time_order_and_it_stays_due_until_sent():
    s = Schedule(delay=1.0, backoff=2.0, backoff_max=5.0, retries=3, breaker_failures=100, breaker_cooldown=10.0)
    for i in range(10_000):
        s.queued(f"u{i}", 10.0 + i)  # due one a second from 11 s on
    s.queued("early", 0.0)
    assert s.due(1.0) == ["early"] and s.next_wake() == 1.0
    assert s.due(1.5) == ["early"]  # not sent (the breaker opened on the way, say): still due
    s.take("early")
    s.sent("early", 1.6)
    assert s.due(1.7) == [] and s.next_wake() == 11.0
    assert s.due(13.0) == ["u0", "u1", "u2"]


class Gateway:
    """A real HTTP receiver on loopback: records every POST; ``fail`` first answers 500 that many
    times; ``hang`` makes every request wait until ``release``."""

    def __init__(self, fail=0, hang=False):
        self.requests, self.fail, self.hang = [], fail, hang
        self.released, self.arrived = threading.Event(), threading.Condition()
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with gateway.arrived:
                    gateway.requests.append(body)
                    gateway.arrived.notify_all()
                    failing = gateway.fail > 0
                    gateway.fail -= 1
                if gateway.hang:
                    gateway.released.wait(60)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d/push" % self.server.server_address[1]

    def wait(self, n, timeout=30):
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= n, timeout), self.requests
        return self.requests[:n]

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    made = []

    def make(**kw):
        made.append(Gateway(**kw))
        return made[-1]
    yield make
    for g in made:
        g.close()


def _push_node(make_server, gw, **settings):
    srv = make_server({"push.url": gw.url, "push.delay": 0.5, "push.backoff": 0.05, **settings})
    srv.register("alice", "bob", "carol")
    for user in ("bob", "carol"):
        with srv.client(user) as c:
            c.request({"type": "push_register", "kind": "test", "token": f"token-{user}"})
    return srv


def test_a_burst_to_an_offline_device_is_one_notification_without_content(make_server, gateway):
    gw = gateway()
    srv = _push_node(make_server, gw)
    with srv.client("alice") as alice, srv.client("carol"):
        for i in range(5):
            alice.send_nowait("bob", f"secret {i}")
        alice.send("bob", "secret 5")
        alice.send("carol", "carol is online: no push")
        [note] = gw.wait(1)
        assert note == {"kind": "test", "token": "token-bob", "count": 6}  # no sender, no text
        alice.send("bob", "one more")
        second = gw.wait(2)[1]
    assert second["token"] == "token-bob" and second["count"] == 7
    assert all(r["token"] == "token-bob" for r in gw.requests)
    with srv.client("alice") as alice:
        gid = alice.group_create("team", ["bob"])
        alice.drain(0.2)
        alice.send(None, "to the group", group=gid)
        assert gw.wait(3)[2]["token"] == "token-bob"  # a group copy wakes the offline member too
    with srv.client("bob") as bob:
        bob.request({"type": "push_unregister"})
    with srv.client("alice") as alice:
        alice.send("bob", "after unregister")
        alice.send("carol", "carol is offline now")
        assert gw.wait(4)[3]["token"] == "token-carol"  # bob's device is not told any more


def test_content_only_when_the_operator_opts_in(make_server, gateway):
    gw = gateway()
    srv = _push_node(make_server, gw, **{"push.include_content": True})
    with srv.client("alice") as alice:
        alice.send("bob", "hello bob")
    [note] = gw.wait(1)
    assert note["messages"] == [{"from": "alice", "body": "hello bob"}]


def test_a_failing_gateway_is_retried_with_backoff(make_server, gateway):
    gw = gateway(fail=2)
    srv = _push_node(make_server, gw)
    with srv.client("alice") as alice:
        alice.send("bob", "hi")
    assert [r["token"] for r in gw.wait(3)] == ["token-bob"] * 3
    deadline = time.monotonic() + 30
    with srv.shell() as shell:
        while True:  # the third answer may still be on its way back to the node
            out, ok = shell.run("(node.push.counters['failures'], node.push.counters['sent'])")
            if out.strip() != "(2, 0)" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert ok and out.strip() == "(2, 1)"


def test_a_hanging_gateway_never_delays_delivery_to_online_users(make_server, gateway):
    gw = gateway(hang=True)
    srv = _push_node(make_server, gw, **{"push.timeout": 30.0})
    with srv.client("alice") as alice, srv.client("carol") as carol:
        alice.send("bob", "to the offline bob")
        gw.wait(1)  # the POST for bob now hangs in the gateway
        for i in range(20):
            alice.send("carol", f"live {i}")
        got = [f["body"] for f in carol.drain(0.5) if f["type"] == "msg"]
        assert got == [f"live {i}" for i in range(20)]
        assert not gw.released.is_set() and len(gw.requests) == 1  # still hanging meanwhile
    gw.released.set()
