"""The long fuzz run: hundreds of thousands of mutated frames against a live whatsupd.

Workers open connection after connection; each carries an optional valid
hello (and login) and then a batch of frames mutated from one valid frame of
every type (whatsup.testing.FUZZ_SEEDS): bytes flipped anywhere, flipped in
the body only (so the framing holds and the decoder and schemas get the
blow), cut short, fields replaced by values of random types, lying length
headers, deep nesting, container headers announcing billions of elements,
plain noise. Mutations that break the framing only ever end a batch (the node
closes the connection there); when the batch still splits into whole frames a
ping follows it.

Checked on every connection: every frame the node sends is a documented type
with a documented error code, and a connection whose framing held answers the
final ping unless the node closed it with a closing error code. Checked
throughout: two bystanders chat (whatsup.testing.Bystander) and must lose
nothing. Checked at the end: the node still runs and its log holds no
"Traceback". Exit status 1 on any failure.

    python3 ops/fuzz.py --frames 100000
"""
import collections
import os
import random
import struct
import sys
import tempfile
import threading
import time

import click
import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from whatsup import protocol  # noqa: E402
from whatsup.testing import (FUZZ_SEEDS, Bystander, ServerProcess, exchange,  # noqa: E402
                             splits_cleanly, undocumented)

MAX_FRAME = 65536
HELLO = protocol.encode(FUZZ_SEEDS[0])
LOGIN = HELLO + protocol.encode(FUZZ_SEEDS[1])
PING = protocol.encode({"type": "ping", "ref": 4242})


def random_value(rng, depth=0):
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2 ** 31, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -2 ** 63, rng.randrange(1000)])
    if pick == 3:
        return rng.choice([0.5, float("nan"), float("inf"), -0.0])
    if pick == 4:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.choice([0, 1, 5, 70, 300])))
    if pick == 5:
        return rng.randbytes(rng.choice([0, 3, 100]))
    if pick == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 7:
        return {str(random_value(rng, 3)): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"type": rng.choice([f["type"] for f in FUZZ_SEEDS])}


#: Mutations that keep the stream splittable into frames (each bad frame must cost an error
#: frame only), and those that break the framing (they end a batch: the node closes).
FRAMED = ("flip_body", "flip_body", "truncate", "field", "field", "field", "drop_field", "deep", "huge_count")
UNFRAMED = ("flip", "lying_length", "noise")


def mutate(rng, kinds):
    """One mutated frame (wire bytes) and the name of the mutation, one of ``kinds``."""
    seed = rng.choice(FUZZ_SEEDS)
    wire = bytearray(protocol.encode(seed))
    kind = rng.choice(kinds)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            wire[rng.randrange(len(wire))] ^= rng.randint(1, 255)
    elif kind == "flip_body":
        for _ in range(rng.randint(1, 4)):
            wire[rng.randrange(4, len(wire))] ^= rng.randint(1, 255)
    elif kind == "truncate":
        cut = rng.randrange(1, len(wire) - 4)
        wire = bytearray(protocol.frame_bytes(bytes(wire[4:4 + cut])))  # a short body, honestly framed
    elif kind in ("field", "drop_field"):
        frame = dict(seed)
        key = rng.choice(list(frame) + ["from", "x", ""])
        if kind == "drop_field":
            frame.pop(key, None)
        else:
            frame[key] = random_value(rng)
        wire = bytearray(protocol.encode(frame))
    elif kind == "lying_length":
        body = bytes(wire[4:])
        wire = bytearray(struct.pack(">I", max(0, len(body) + rng.choice([-3, -1, 1, 2, 1000, MAX_FRAME]))) + body)
    elif kind == "deep":  # "ids": [[[...["x"]...]]], packed by hand (msgpack's packer stops at 512)
        depth = rng.choice([50, 500, 5000, 60000])
        wire = bytearray(protocol.frame_bytes(
            msgpack.packb({"type": seed["type"], "ref": 1}).replace(b"\x82", b"\x83", 1)
            + msgpack.packb("ids") + b"\x91" * depth + msgpack.packb("x")))
    elif kind == "huge_count":
        wire = bytearray(protocol.frame_bytes(rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff",
                                                          b"\xdb\xff\xff\xff\xf0abc", b"\xc6\xff\xff\xff\xff"])))
    else:
        wire = bytearray(rng.randbytes(rng.randrange(1, 40)))
    return bytes(wire), kind


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.failures = []

    def add(self, counts, failures=()):
        with self.lock:
            self.counts.update(counts)
            self.failures.extend(failures)


def worker(server, rng, frames, batch, tally):
    done = 0
    while done < frames:
        counts, failures = collections.Counter(), []
        prefix = rng.choice([b"", HELLO, LOGIN, LOGIN])
        parts = []
        for i in range(min(batch, frames - done)):
            last = i == batch - 1 and rng.random() < 0.3
            wire, kind = mutate(rng, UNFRAMED if last else FRAMED)
            parts.append(wire)
            counts["mutation:" + kind] += 1
        done += len(parts)
        data = prefix + b"".join(parts)
        clean = splits_cleanly(data, MAX_FRAME)
        try:
            answers = exchange(server, data + PING if clean else data, timeout=20)
        except Exception as exc:  # a node that stops answering or speaks garbage
            failures.append(f"connection failed: {exc!r}")
            answers = []
        counts["frames"] += len(parts)
        counts["connections"] += 1
        counts["clean_batches"] += clean
        for frame in answers:
            why = undocumented(frame)
            if why:
                failures.append(why)
            counts["answer:" + (frame.get("code") or frame.get("type", "?"))] += 1
        closing = [f for f in answers if f.get("code") in protocol.CLOSING]
        counts["closed_by_node"] += bool(closing)
        if clean and not closing and {"type": "pong", "ref": 4242} not in answers:
            failures.append(f"a batch that kept the framing lost its connection; answers {answers[-3:]!r}")
        tally.add(counts, failures)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--frames", default=100_000, show_default=True, help="mutated frames in all")
@click.option("--workers", default=4, show_default=True, help="connections fuzzing at once")
@click.option("--batch", default=100, show_default=True, help="mutated frames per connection")
@click.option("--seed", default=None, type=int, help="random seed (printed; reuse it to replay)")
@click.option("--dir", "directory", default=None, help="work dir (temporary by default)")
def main(frames, workers, batch, seed, directory):
    """Fuzz a live node with mutated frames while two bystanders chat."""
    seed = random.randrange(2 ** 32) if seed is None else seed
    directory = directory or tempfile.mkdtemp(prefix="whatsup-fuzz-")
    click.echo(f"fuzz: seed={seed} dir={directory}", err=True)
    os.makedirs(directory, exist_ok=True)
    # the fuzzers share 127.0.0.1 with the bystander and get closed with flooding on purpose:
    # no flood penalty, or the bystander's address would be refused with them
    srv = ServerProcess(directory, {"offd.max_queue": 1000, "server.flood_closes": 0})
    srv.start()
    srv.register("fuzzer", "sink", "fz-alice", "fz-bob")
    bystander = Bystander(srv, "fz-alice", "fz-bob")
    bystander.start()
    tally, master = Tally(), random.Random(seed)
    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True,
                                args=(srv.server, random.Random(master.random()),
                                      frames // workers + (i < frames % workers), batch, tally))
               for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    exchanged, lost = bystander.stop()
    alive = srv.proc.poll() is None
    tracebacks = srv.log().count("Traceback")
    srv.stop()
    c = tally.counts
    for key in sorted(c):
        click.echo(f"{key:>34} {c[key]}")
    click.echo(f"{'seconds':>34} {seconds:.1f}")
    click.echo(f"{'frames per second':>34} {c['frames'] / seconds:.0f}")
    click.echo(f"{'bystander messages':>34} {exchanged}")
    click.echo(f"{'bystander failures':>34} {len(lost)}")
    click.echo(f"{'node alive':>34} {alive}")
    click.echo(f"{'tracebacks in the node log':>34} {tracebacks}")
    problems = tally.failures + lost + ([] if alive else ["the node died"]) + (
        [f"{tracebacks} traceback(s) in {srv.log_path}"] if tracebacks else [])
    for line in problems[:20]:
        click.echo(f"FAIL: {line}", err=True)
    sys.exit(1 if problems or not exchanged else 0)


if __name__ == "__main__":
    main()
