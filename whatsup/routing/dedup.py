"""The dedup window: the last ``size`` message ids of each sender, 28 to 32 bytes each.

docs/PROTOCOL.md ("Messages and ticks"): a retransmitted id is answered
``sent`` again and never queued twice, for the last ``session.dedup_window``
ids of each sender, across restarts and compaction; and a ``read`` may name
only messages the sender sent to the reader (or the group) and the reader's
device got. A sender's window is a ring of entries (64-bit blake2b digest of
destination and id, ts in ms, the copy's seq: 0 for a group): ``size`` × 24
bytes at most (96 KiB for the default 4096), in 3 KiB pages of 128 entries.
The first page grows entry by entry, so a sender who wrote a few messages
holds just those; every later page is allocated whole and never moves. One
bytearray grown by ``+=`` to 96 KiB is re-allocated an eighth larger each
time, and the chunks the rings left behind, each smaller than any later
request, grew glibc's free heap with the windows (5 -> 28 MiB in a 30-minute
soak). Plus its index (below: 32 KiB for a full default window)
and ~300 bytes of fixed cost. It was an OrderedDict of id
-> object (~350 bytes an id, 1.4 MiB a busy sender; RSS grew 161 -> 414 MB
under traffic).

A lookup goes through an open-addressing index of ring slots (``array('I')``,
at least twice as many slots as entries: 4 to 8 bytes more an entry), so it
costs a probe or two whatever the window holds; a ``bytearray.find`` over the
whole ring cost up to 96 KiB of scanning per message and took the offline
spool from ~50k to ~18k msgs/s (59 % of the hub in ops.bench's offline
scenario). Two different (destination, id) pairs share a digest with
probability 2**-64, so a new message is taken for a retransmission of one of a
window's ids with probability at most size / 2**64 (about 2e-16 for 4096): it
would get ``sent`` and not be delivered. offd keeps the window across
restarts: it asks which of the digests its records made are still in the
window (:meth:`Dedup.pick`) and writes those entries to its ids file.

I/O-free: tested directly (tests/test_dedup_window.py).
"""
import hashlib
import sys
from array import array

ENTRY = 24
EMPTY = 0   # an index slot holds a ring slot + 1
SHIFT = 7   # a ring page holds 2**SHIFT entries (3 KiB)
LOW = (1 << SHIFT) - 1


def digest(to, cid):
    """The 8 bytes a window keeps of message id ``cid`` sent to ``to`` (a user or a group id)."""
    return hashlib.blake2b(f"{to}\x00{cid}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


class Ring:
    """One sender's entries in pages of 128: the first grows entry by entry (then is copied once
    to its exact size), every later one is allocated whole and never moves; ``count`` entries
    are held, ``n`` counts every entry ever added (the next ``k``).

    ``index`` is a linear-probing table of ring slots + 1 keyed by the digest's
    low bits, kept at most half full; an overwritten entry leaves it by
    backward-shift deletion, so no tombstones accumulate."""
    __slots__ = ("pages", "count", "n", "index", "mask")

    def __init__(self):
        self.pages, self.count, self.n = [bytearray()], 0, 0
        self.index, self.mask = array("I", bytes(4 * 8)), 7

    def __repr__(self):
        return f"<Ring entries={self.count} added={self.n} index={len(self.index)}>"

    def put(self, slot, entry):
        """Write ``entry`` (24 bytes) over ring ``slot``, in place."""
        pos = (slot & LOW) * ENTRY
        self.pages[slot >> SHIFT][pos:pos + ENTRY] = entry

    def entry(self, slot):
        """The 24 bytes of ring ``slot``."""
        pos = (slot & LOW) * ENTRY
        return self.pages[slot >> SHIFT][pos:pos + ENTRY]

    def home(self, slot):
        """Where the digest of ring ``slot`` starts probing."""
        pos = (slot & LOW) * ENTRY
        return int.from_bytes(self.pages[slot >> SHIFT][pos:pos + 8], "little") & self.mask

    def lookup(self, h):
        """The ring slot holding digest ``h``, or -1."""
        index, mask, pages = self.index, self.mask, self.pages
        i = int.from_bytes(h, "little") & mask
        while (t := index[i]) != EMPTY:
            t -= 1
            pos = (t & LOW) * ENTRY
            if pages[t >> SHIFT][pos:pos + 8] == h:
                return t
            i = (i + 1) & mask
        return -1

    def link(self, slot):
        """Put ring ``slot`` (already written) into the index, growing it past half full."""
        if 2 * self.count > len(self.index):
            self.index, self.mask = array("I", bytes(8 * len(self.index))), 2 * len(self.index) - 1
            for other in range(self.count):
                if other != slot:
                    self._place(other)
        self._place(slot)

    def _place(self, slot):
        index, mask = self.index, self.mask
        i = self.home(slot)
        while index[i] != EMPTY:
            i = (i + 1) & mask
        index[i] = slot + 1

    def unlink(self, slot):
        """Take ring ``slot`` (still holding its old digest) out of the index."""
        index, mask = self.index, self.mask
        i = self.home(slot)
        while index[i] != slot + 1:
            i = (i + 1) & mask
        j = i
        while True:  # backward shift: pull up every later entry whose probe passed slot i
            j = (j + 1) & mask
            t = index[j]
            if t == EMPTY:
                break
            home = self.home(t - 1)
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                index[i], i = t, j
        index[i] = EMPTY


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
        """The memory the windows take: pages and indexes as allocated, O(senders): for the shell
        and tools."""
        return sum(sys.getsizeof(r.pages) + sum(map(sys.getsizeof, r.pages)) + sys.getsizeof(r.index)
                   for r in self.rings.values())

    def find(self, sender, h):
        """``(ts, seq)`` of digest ``h`` in ``sender``'s window, or None."""
        ring = self.rings.get(sender)
        if ring is None or (slot := ring.lookup(h)) < 0:
            return None
        e = ring.entry(slot)
        return int.from_bytes(e[8:16], "big"), int.from_bytes(e[16:ENTRY], "big")

    def add(self, sender, h, ts, seq=0):
        """Remember digest ``h`` (ts in ms, seq of its copy). The oldest entry goes when full."""
        ring = self.rings.get(sender)
        if ring is None:
            ring = self.rings[sender] = Ring()
        slot = ring.n % self.size
        entry = h + ts.to_bytes(8, "big") + seq.to_bytes(8, "big")
        if ring.count == self.size:
            ring.unlink(slot)
            ring.put(slot, entry)
        elif slot <= LOW:  # the first page grows with the sender: a light one holds just its entries
            first = ring.pages[0]
            first += entry
            if len(first) == min(LOW + 1, self.size) * ENTRY:  # full: copied once to its exact size
                ring.pages[0] = bytearray(first)
            ring.count += 1
        else:  # the later ones are allocated whole, once
            if slot & LOW == 0:
                ring.pages.append(bytearray(min(LOW + 1, self.size - slot) * ENTRY))
            ring.put(slot, entry)
            ring.count += 1
        ring.link(slot)
        ring.n += 1

    def pick(self, sender, digests):
        """The packed entries of those of ``digests`` (8 bytes each, concatenated) still in
        ``sender``'s window, each once."""
        ring = self.rings.get(sender)
        if ring is None:
            return b""
        out = bytearray()
        for h in dict.fromkeys(digests[i:i + 8] for i in range(0, len(digests), 8)):
            slot = ring.lookup(h)
            if slot >= 0:
                out += ring.entry(slot)
        return bytes(out)


def digests(data):
    """The digests of packed entries, concatenated (what :meth:`Dedup.pick` takes)."""
    return b"".join(data[i:i + 8] for i in range(0, len(data), ENTRY))


def unpack_entries(data):
    """(digest, ts, seq) of packed entries (an offd ``H`` record)."""
    if len(data) % ENTRY:
        raise ValueError(f"{len(data)} bytes are not a whole number of {ENTRY}-byte entries")
    return [(data[i:i + 8], int.from_bytes(data[i + 8:i + 16], "big"), int.from_bytes(data[i + 16:i + ENTRY], "big"))
            for i in range(0, len(data), ENTRY)]
