"""What a mailbox hop costs next to a direct call: the figure behind the direct calls into the
router, presence, blocks and groups (whatsup/runtime/service.py, docs/ARCHITECTURE.md).

    python3 -m ops.hop [--n 100000]

Three ways for a caller process to have a trivial handler run: a direct method call (what the
sessions do), a ``table.call`` round trip (a hop there and an answer back through an
AsyncResult), and a cast whose answer comes back as a message to the caller's mailbox (how a
router process would answer a session). Prints µs per request (CPU time of the process, one
core): one greenlet switch pair per hop is the cost, whatever the handler does.
"""
import argparse
import time

import gevent

from whatsup.runtime import ProcessTable


class Echo:
    """The handler: as cheap as possible, so what is measured is the hop."""
    vsn = 1

    @staticmethod
    def init(proc):
        return 0

    def answer(self, n):
        return n

    @staticmethod
    def handle_call(proc, request, n):
        return request, n + 1

    @staticmethod
    def handle_cast(proc, msg, n):
        proc.table.send(msg[0], ("reply", msg[1]))
        return n + 1


class Caller:
    """A process that asks ``n`` times in the given way, then reports its CPU seconds."""
    vsn = 1

    @staticmethod
    def init(proc, table, target, way, n, done):
        return {"table": table, "target": target, "way": way, "n": n, "done": done}

    @staticmethod
    def handle_info(proc, msg, st):
        table, target, n = st["table"], st["target"], st["n"]
        started = time.process_time()
        if st["way"] == "direct":
            echo = Echo()
            for i in range(n):
                echo.answer(i)
        elif st["way"] == "call":
            for i in range(n):
                table.call(target, i)
        else:
            for i in range(n):
                table.cast(target, (proc.pid, i))
                proc.mailbox.get()  # the answer, as a session would take it
        st["done"].set(time.process_time() - started)
        return st


def measure(way, n):
    from gevent.event import AsyncResult
    table, done = ProcessTable(), AsyncResult()
    target = table.spawn(Echo)
    caller = table.spawn(Caller, table, target, way, n, done)
    table.send(caller, ("go",))
    seconds = done.get()
    table.stop(caller)
    table.stop(target)
    return seconds / n * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    for way in ("direct", "call", "cast+reply"):
        print(f"{way:<11} {measure(way, args.n):7.2f} µs per request")
    gevent.sleep(0)


if __name__ == "__main__":
    main()
