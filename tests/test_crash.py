"""kill -9 in the middle: nothing that got ✓ is lost, nothing is shown twice."""
import threading
import time

from whatsup.client import Closed


def stream(server, sender, to, stop, sent_ids, acked_ids):
    """Pipeline messages until the server dies; record what was sent and what got ✓."""
    try:
        with server.client(sender) as c:
            i = 0
            while not stop.is_set():
                frame = c.send_nowait(to, f"{sender} {i}", id=f"{sender}-{i}")
                sent_ids.append(frame["id"])
                i += 1
                while len(acked_ids) < i - 100 and not stop.is_set():  # at most 100 in flight
                    f = c.recv(1)
                    if f is not None and f["type"] == "sent":
                        acked_ids.append(f["id"])
    except (Closed, OSError):
        pass


def test_every_acked_message_survives_kill_9_exactly_once_and_in_order(make_server):
    server = make_server()
    server.register("alice", "bob")
    stop = threading.Event()
    sent_ids, acked_ids = [], []
    t = threading.Thread(target=stream, args=(server, "alice", "bob", stop, sent_ids, acked_ids))
    t.start()
    deadline = time.monotonic() + 20
    while len(acked_ids) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    stop.set()
    t.join(10)
    assert len(acked_ids) >= 500
    server.start()
    with server.client("bob") as bob:
        got = [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"]
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert set(acked_ids) <= set(got), f"lost {len(set(acked_ids) - set(got))} acked messages"
    order = {mid: n for n, mid in enumerate(sent_ids)}
    assert [order[m] for m in got] == sorted(order[m] for m in got), "order changed"


def test_an_online_recipient_sees_no_duplicates_across_kill_9(make_server):
    server = make_server()
    server.register("alice", "bob")
    bob = server.client("bob")
    with server.client("alice") as alice:
        for i in range(200):
            alice.send_nowait("bob", f"m{i}", id=f"m{i}")
        shown = []
        while len(shown) < 200:
            f = bob.recv(5)
            assert f is not None
            if f["type"] == "msg":
                shown.append(f["id"])
    server.kill()  # bob's last acks may not be on disk: they come again, with the same seq
    server.start()
    again = server.client("bob", last_seq=bob.last_seq)
    shown += [f["id"] for f in again.drain(1.0) if f["type"] == "msg"]
    assert shown == [f"m{i}" for i in range(200)]
    again.close()
    bob.sock.close()


def test_a_registered_user_survives_kill_9(make_server):
    server = make_server()
    server.register("zoe")
    server.kill()
    server.start()
    with server.client("zoe") as zoe:
        assert zoe.user == "zoe"
