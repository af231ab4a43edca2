"""Group fan-out figures on a real whatsupd: ✓ latency of a message to a 1024-member group,
and copies per second for pipelined group messages.

    python3 ops/bench_fanout.py [--members 1024] [--messages 50]
"""
import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whatsup.testing import ServerProcess  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1024)
    ap.add_argument("--messages", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(tmp).start()
        try:
            users = [f"m{i:05d}" for i in range(args.members)]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda part: srv.register(*part), [users[i::16] for i in range(16)]))
            boss = srv.client(users[0])
            gid = boss.group_create("bench", users[1:])
            lat = []
            for _ in range(10):
                t = time.perf_counter()
                boss.send(None, "x", group=gid)
                lat.append(time.perf_counter() - t)
            lat.sort()
            print(f"{args.members}-member group: ✓ latency median {1000 * lat[5]:.1f} ms, "
                  f"max {1000 * lat[-1]:.1f} ms")
            t = time.perf_counter()
            for i in range(args.messages):
                boss.send_nowait(None, f"m{i}", group=gid)
            sent = 0
            while sent < args.messages:
                frame = boss.recv(60)
                assert frame is not None, "no ✓ within 60 s"
                sent += frame["type"] == "sent"
            dt = time.perf_counter() - t
            copies = args.messages * (args.members - 1)
            print(f"{args.messages} pipelined group messages: {dt:.2f} s, {copies / dt:.0f} copies/s")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
