"""A device that stops reading costs the server a bounded buffer, then its connection — never
its messages (docs/PROTOCOL.md, "Limits": session.max_outbound, protocol.send_timeout)."""
import time

import psutil

from rawwire import RawConnection
from whatsup import protocol

N = 50_000
BATCH = 1000
BODY = "x" * 100


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_stalled_reader_is_closed_with_bounded_memory_and_gets_everything_on_its_next_login(make_server):
    server = make_server({
        "ratelimit.msg": 0.0,                 # this sender floods on purpose
        "session.window": 100_000,            # so the byte bound, not the item window, holds the line
        "session.max_outbound": 4 * 65536,
        "protocol.send_timeout": 1.0,
    })
    server.register("fast", "slow")
    rss = psutil.Process(server.proc.pid)
    stalled = RawConnection(server, rcvbuf=4096)
    assert stalled.login("slow")["type"] == "ok"          # ... and never reads again
    baseline = peak = rss.memory_info().rss

    with server.client("fast") as fast:
        for start in range(0, N, BATCH):
            for i in range(start, start + BATCH):
                fast.send_nowait("slow", f"{i} {BODY}", id=f"m{i}")
            acked = [fast.recv(30) for _ in range(BATCH)]
            assert all(f is not None and f["type"] == "sent" for f in acked), acked[-1]
            peak = max(peak, rss.memory_info().rss)

    wait_for(lambda: "slow_reader" in server.log(), what="the stalled session to be closed")
    stalled.sock.close()
    # 50,000 queued items of ~150 bytes are ~15 MB of offd RAM; the session itself may hold
    # at most session.max_outbound. 200 MB above the baseline would mean an unbounded buffer.
    print(f"server RSS: baseline {baseline / 2 ** 20:.1f} MiB, peak {peak / 2 ** 20:.1f} MiB")
    assert peak - baseline < 200 * 2 ** 20, (baseline, peak)

    with server.client("slow") as slow:
        assert slow.last_login["queued"] == N
        got = []
        while len(got) < N:
            frame = slow.recv(30)
            assert frame is not None, f"stopped after {len(got)} messages"
            if frame["type"] == "msg":
                got.append(frame)
        assert [f["id"] for f in got] == [f"m{i}" for i in range(N)]
        assert [f["seq"] for f in got] == sorted(f["seq"] for f in got)
        assert all(f["body"] == f"{i} {BODY}" and f["from"] == "fast" for i, f in enumerate(got))


def test_a_device_that_requests_but_never_reads_its_answers_is_closed_at_max_outbound(make_server):
    server = make_server({"protocol.max_frame": 2048, "protocol.max_body": 1024, "ratelimit.ping": 0.0,
                          "session.max_outbound": 8192, "protocol.send_timeout": 3600.0})
    server.register("greedy")
    with RawConnection(server, rcvbuf=4096) as greedy:
        greedy.login("greedy")
        # 5 MB of pongs it will not read: more than loopback TCP buffers hold (tcp_wmem max 4 MB)
        pings = protocol.encode({"type": "ping", "ref": 7}) * 250_000
        greedy.sock.settimeout(60)
        try:
            greedy.sock.sendall(pings)
        except (BrokenPipeError, ConnectionResetError):
            pass
        wait_for(lambda: "more than session.max_outbound" in server.log(), what="the slow_reader close")
        greedy.until_closed()


def test_pipelined_messages_beyond_max_inflight_are_all_answered_in_order(make_server):
    server = make_server({"session.max_inflight": 2, "mailbox.session": 66, "ratelimit.msg": 0.0})
    server.register("alice", "bob")
    with server.client("alice") as alice:
        for i in range(500):
            alice.send_nowait("bob", f"m{i}", id=f"m{i}")
        answers = [alice.recv(30) for _ in range(500)]
        assert [f["id"] for f in answers] == [f"m{i}" for i in range(500)]
    with server.client("bob") as bob:
        got = [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"]
        assert got == [f"m{i}" for i in range(500)]
