"""The dedup window: the last ``size`` message ids of each sender, 24 bytes each.

docs/PROTOCOL.md ("Messages and ticks"): a retransmitted id is answered
``sent`` again and never queued twice, for the last ``session.dedup_window``
ids of each sender, across restarts and compaction; and a ``read`` may name
only messages the sender sent to the reader (or the group) and the reader's
device got. A sender's window is a ring in one bytearray of entries
(64-bit blake2b digest of destination and id, ts in ms, the copy's seq: 0 for
a group): ``size`` × 24 bytes at most (96 KiB for the default 4096), grown as
the sender writes, plus ~150 bytes of fixed cost. It was an OrderedDict of id
-> object (~350 bytes an id, 1.4 MiB a busy sender; RSS grew 161 -> 414 MB
under traffic).

A lookup is one ``bytearray.find`` (memmem over at most 96 KiB) plus an
alignment check. Two different (destination, id) pairs share a digest with
probability 2**-64, so a new message is taken for a retransmission of one of a
window's ids with probability at most size / 2**64 (about 2e-16 for 4096): it
would get ``sent`` and not be delivered. Entries are numbered (``k``) in the
order they were added: offd compaction asks for ranges of them to carry
(:meth:`Dedup.entries`).

I/O-free: tested directly (tests/test_dedup_window.py).
"""
import hashlib

ENTRY = 24


def digest(to, cid):
    """The 8 bytes a window keeps of message id ``cid`` sent to ``to`` (a user or a group id)."""
    return hashlib.blake2b(f"{to}\x00{cid}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


class Ring:
    """One sender's entries; ``n`` counts every entry ever added (the next ``k``)."""
    __slots__ = ("buf", "n")

    def __init__(self):
        self.buf, self.n = bytearray(), 0

    def __repr__(self):
        return f"<Ring entries={len(self.buf) // ENTRY} added={self.n}>"


class Dedup:
    """Every sender's ring, ``size`` entries each at most."""

    def __init__(self, size):
        self.size = size
        self.rings = {}  # sender -> Ring

    def __repr__(self):
        return f"<Dedup senders={len(self.rings)} bytes={self.nbytes()}>"

    def __len__(self):
        return len(self.rings)

    def nbytes(self):
        return sum(len(r.buf) for r in self.rings.values())

    def find(self, sender, h):
        """``(ts, seq)`` of digest ``h`` in ``sender``'s window, or None."""
        ring = self.rings.get(sender)
        if ring is None:
            return None
        buf = ring.buf
        i = buf.find(h)
        while i >= 0:
            if not i % ENTRY:
                return int.from_bytes(buf[i + 8:i + 16], "big"), int.from_bytes(buf[i + 16:i + ENTRY], "big")
            i = buf.find(h, i + 1)
        return None

    def add(self, sender, h, ts, seq=0):
        """Remember digest ``h`` (ts in ms, seq of its copy); returns its ``k``. The oldest
        entry goes when full."""
        ring = self.rings.get(sender)
        if ring is None:
            ring = self.rings[sender] = Ring()
        entry = h + ts.to_bytes(8, "big") + seq.to_bytes(8, "big")
        if len(ring.buf) < self.size * ENTRY:
            ring.buf += entry
        else:
            pos = ring.n % self.size * ENTRY
            ring.buf[pos:pos + ENTRY] = entry
        ring.n += 1
        return ring.n - 1

    def entries(self, sender, first, last):
        """The packed entries numbered ``first``..``last`` that are still in ``sender``'s window."""
        ring = self.rings.get(sender)
        if ring is None:
            return b""
        first, last = max(first, ring.n - self.size), min(last, ring.n - 1)
        if first > last:
            return b""
        a, b = first % self.size * ENTRY, last % self.size * ENTRY + ENTRY
        buf = ring.buf
        return bytes(buf[a:b]) if a < b else bytes(buf[a:]) + bytes(buf[:b])


def unpack_entries(data):
    """(digest, ts, seq) of packed entries (an offd ``H`` record)."""
    if len(data) % ENTRY:
        raise ValueError(f"{len(data)} bytes are not a whole number of {ENTRY}-byte entries")
    return [(data[i:i + 8], int.from_bytes(data[i + 8:i + 16], "big"), int.from_bytes(data[i + 16:i + ENTRY], "big"))
            for i in range(0, len(data), ENTRY)]
