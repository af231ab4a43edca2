"""The dedup window's I/O-free core (whatsup/routing/dedup.py): 24 bytes an id (and its index slot), bounded per sender."""
import sys

from whatsup.routing.dedup import ENTRY, Dedup, digest, digests, unpack_entries


def test_an_id_is_found_with_its_ts_until_size_newer_ids_push_it_out():
    d = Dedup(4)
    for n in range(4):
        d.add("ann", digest("bob", f"m{n}"), 1000 + n)
    assert [d.find("ann", digest("bob", f"m{n}")) for n in range(4)] == [(1000, 0), (1001, 0), (1002, 0), (1003, 0)]
    d.add("ann", digest("bob", "m4"), 1004, seq=77)
    assert d.find("ann", digest("bob", "m0")) is None and d.find("ann", digest("bob", "m4")) == (1004, 77)
    assert d.find("bob", digest("bob", "m1")) is None  # windows are per sender
    assert d.find("ann", digest("cid", "m1")) is None  # and an id is known with where it went
    assert d.rings["ann"].count == 4 and sum(map(len, d.rings["ann"].pages)) == 4 * ENTRY  # never more


def test_a_window_grows_in_pages_that_never_move_and_nbytes_counts_what_is_allocated():
    d = Dedup(1000)
    hs = [digest("bob", f"m{n}") for n in range(1001)]
    for n, h in enumerate(hs[:3]):
        d.add("ann", h, n)
    ring = d.rings["ann"]
    assert sum(map(len, ring.pages)) == 3 * ENTRY  # a light sender holds just its entries
    for n, h in enumerate(hs[3:200], 3):
        d.add("ann", h, n)
    second = ring.pages[1]
    for n, h in enumerate(hs[200:], 200):
        d.add("ann", h, n)  # the last one overwrites m0 in place
    assert ring.pages[1] is second  # allocated once: no re-allocation leaves holes in the heap
    assert [len(p) // ENTRY for p in ring.pages] == [128] * 7 + [104]  # exactly the window
    assert sys.getsizeof(ring.pages[0]) < 128 * ENTRY + 100  # the first page, full, holds no growth slack
    assert d.nbytes() == sys.getsizeof(ring.pages) + sum(map(sys.getsizeof, ring.pages)) + sys.getsizeof(ring.index)
    assert d.find("ann", hs[0]) is None and d.find("ann", hs[1]) == (1, 0) and d.find("ann", hs[1000]) == (1000, 0)


def test_a_digest_matching_across_two_entries_is_not_taken_for_an_id():
    d = Dedup(8)
    d.add("ann", b"\x00" * 4 + b"\x11" * 4, int.from_bytes(b"\x22" * 4 + b"\x00" * 4, "big"))
    straddling = b"\x11" * 4 + b"\x22" * 4  # the bytes exist, but not at an entry's start
    assert d.find("ann", straddling) is None


def test_pick_gives_the_entries_of_the_digests_still_in_the_window_each_once():
    d = Dedup(3)
    hs = [digest("bob", f"m{n}") for n in range(5)]
    for n, h in enumerate(hs):
        d.add("ann", h, n, seq=10 + n)
    picked = unpack_entries(d.pick("ann", b"".join(hs + hs[3:4])))  # m3 named twice
    assert [(h, ts, seq) for h, ts, seq in picked] == [(hs[n], n, 10 + n) for n in (2, 3, 4)]  # m0, m1 are gone
    assert digests(d.pick("ann", hs[4] + hs[0])) == hs[4]
    assert d.pick("ann", hs[0]) == b"" and d.pick("nobody", hs[4]) == b""


def test_lookups_stay_right_while_crowded_index_slots_are_overwritten_and_shifted_back():
    """Digests that share their low bits crowd one run of index slots; every eviction must leave
    each id still in the window findable and every evicted one gone (a model says which)."""
    import random
    rnd = random.Random(4244)
    d, size, window = Dedup(64), 64, []
    for n in range(3000):
        low = rnd.choice((0, 1, 2, 3, rnd.randrange(1 << 16)))  # clusters at homes 0..3
        h = (low | n << 20).to_bytes(8, "little")
        d.add("ann", h, n, seq=n)
        window = (window + [h])[-size:]
        if n % 97 == 0:
            assert all(d.find("ann", x) is not None for x in window)
    gone = [(low | n << 20).to_bytes(8, "little") for n in range(100) for low in range(4)]
    assert all(d.find("ann", x) is None for x in gone)
    assert [d.find("ann", x)[1] for x in window] == list(range(3000 - size, 3000))
