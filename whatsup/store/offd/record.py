"""offd's on-disk record format (docs/ARCHITECTURE.md, "offd"). Pure: bytes in, records out.

A segment file is a sequence of records::

    magic  b"\\xa7W"      2 bytes
    length uint32 BE     bytes in body
    crc32  uint32 BE     of body
    body   msgpack array, one of
           ["B", counter]                              sequence base, first in every segment
           ["P", user, seq, ts, kind, sender, cid, frame]  an item queued for ``user`` (kind "direct":
                                                       for one device of the user, ``cid`` its id)
           ["D", user, upto]                           items of ``user`` with seq <= upto are gone
           ["A", user, device, upto]                   ``device`` of ``user`` acked up to upto (a
                                                       cursor past the front of the user's queue:
                                                       other devices still hold those items)
           ["G", seq, ts, gid, sender, cid, frame, users]  one group message's copy for ``users``
                                                       (this shard's members): one seq, one
                                                       frame, each queue a reference to it
           ["F", seq, ts, gid, sender, cid, body, members]  a group fan-out's intent, on the
                                                       group's home shard (the shard of gid),
                                                       durable before any G of it is written
           ["E", sender, cid]                          that fan-out's G records are all durable
           ["H", sender, entries]                      dedup window entries compaction carried
                                                       (dedup.ENTRY bytes each: digest, ts, seq);
                                                       written to the shard's ids files
                                                       (ids-NNNNNNNNNN.log, H records only), older
                                                       nodes wrote them into segments
           ["I", sender, user, [[cid, seq, ts], ...]]  (read only: older nodes' carried ids)

The magic lets recovery resynchronise after a damaged record: it keeps every
intact record and counts the bad ones instead of giving up on the rest of the file.
"""
import struct
import zlib

import msgpack

from ...protocol import pack

MAGIC = b"\xa7W"
HEAD = struct.Struct(">2sII")
MAX_BODY = 16 * 2 ** 20


def encode(body):
    data = pack(body)
    return HEAD.pack(MAGIC, len(data), zlib.crc32(data)) + data


def base(counter):
    return encode(["B", counter])


def put(user, seq, ts, kind, sender, cid, frame):
    return encode(["P", user, seq, ts, kind, sender, cid, frame])


def delete(user, upto):
    return encode(["D", user, upto])


def cursor(user, device, upto):
    return encode(["A", user, device, upto])


def group(seq, ts, gid, sender, cid, frame, users):
    return encode(["G", seq, ts, gid, sender, cid, frame, users])


def intent(seq, ts, gid, sender, cid, body, members):
    return encode(["F", seq, ts, gid, sender, cid, body, members])


def done(sender, cid):
    return encode(["E", sender, cid])


def carried(sender, entries):
    return encode(["H", sender, entries])


def scan(data):
    """Decode a segment's bytes; returns (records, bad, end).

    ``records`` are the decoded bodies in file order, ``bad`` counts damaged
    regions skipped, ``end`` is the offset just past the last intact record (a
    torn tail beyond it is cut off by recovery).
    """
    records = []
    bad, end = walk(data, records.append)
    return records, bad, end


def walk(data, emit):
    """:func:`scan`, handing each record to ``emit`` as it is decoded (which may yield to the
    hub between two); returns (bad, end)."""
    bad, pos, end, n = 0, 0, 0, len(data)
    while pos + HEAD.size <= n:
        magic, length, crc = HEAD.unpack_from(data, pos)
        stop = pos + HEAD.size + length
        if magic == MAGIC and length <= MAX_BODY and stop <= n:
            body = data[pos + HEAD.size:stop]
            if zlib.crc32(body) == crc:
                try:
                    rec = msgpack.unpackb(body, raw=False)
                except Exception:
                    pass
                else:
                    emit(rec)
                    pos = end = stop
                    continue
        if stop > n and magic == MAGIC and data.find(MAGIC, pos + 1) < 0:
            break  # a torn last record: not damage, just an append the crash cut short
        bad += 1
        nxt = data.find(MAGIC, pos + 1)
        if nxt < 0:
            break
        pos = nxt
    return bad, end
