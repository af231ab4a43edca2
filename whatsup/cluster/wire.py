"""What one inbox entry carries: a msgpack list whose pids survive the trip.

A message is a tuple ``(kind, *args)``; tuples nested in it come back as
lists, except pids (an ext type, so ``Pid(node, n)`` compares equal on both
sides) and the outer message itself. Anything else msgpack cannot carry (an
exception in a crash reason) travels as its repr.
"""
import msgpack

from ..runtime.process import Pid

PID = 1


def _default(obj):
    if isinstance(obj, Pid):
        return msgpack.ExtType(PID, msgpack.packb((obj.node, obj.n)))
    return repr(obj)


def _ext(code, data):
    if code == PID:
        node, n = msgpack.unpackb(data)
        return Pid(node, n)
    return msgpack.ExtType(code, data)


def _pids(obj):
    """msgpack packs a Pid (a tuple) as a list before ``default`` sees it: tag them first."""
    if type(obj) is Pid:
        return msgpack.ExtType(PID, msgpack.packb((obj.node, obj.n)))
    if type(obj) in (tuple, list):
        return [_pids(x) for x in obj]
    if type(obj) is dict:
        return {k: _pids(v) for k, v in obj.items()}
    return obj


def encode(msg):
    return msgpack.packb(_pids(msg), default=_default, use_bin_type=True)


def decode(data):
    return tuple(msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False))
