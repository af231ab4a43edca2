"""Framing shared by the load generator and the baseline servers (docs/PROTOCOL.md, "Framing").

Deliberately not whatsup.protocol: the baselines must not inherit whatsup's
validation costs, and the load generator needs the cheapest possible split.
"""
import msgpack

_pack = msgpack.Packer(use_bin_type=True).pack


def encode(frame):
    """4-byte big-endian length, then the msgpack map."""
    body = _pack(frame)
    return len(body).to_bytes(4, "big") + body


def spans(buf):
    """(start, end) of the body of each complete frame at the front of ``buf``."""
    pos, size = 0, len(buf)
    while size - pos >= 4:
        end = pos + 4 + int.from_bytes(buf[pos:pos + 4], "big")
        if end > size:
            return
        yield pos + 4, end
        pos = end


def split(buf):
    """Complete frame bodies at the front of ``buf`` (a bytearray): returns (bodies, bytes used)."""
    bodies, used = [], 0
    for start, used in spans(buf):
        bodies.append(bytes(buf[start:used]))
    return bodies, used


def boundary(buf):
    """How many bytes at the front of ``buf`` form complete frames (nothing decoded)."""
    used = 0
    for _, used in spans(buf):
        pass
    return used


def decode(body):
    return msgpack.unpackb(body, raw=False)
