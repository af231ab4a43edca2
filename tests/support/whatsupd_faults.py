"""whatsupd with a fault injector, for tests that crash one process of a live node.

On SIGUSR1 the node reads one command from ``<dir of data_dir>/fault`` and writes
its answer as JSON to ``fault.out`` beside it:

    crash KIND ENTITY   cast a message the process does not know to the worker serving
                        ENTITY (e.g. ``crash offd bob``): a real crash in its handler
    where KIND ENTITY   the node's ``where(kind, entity)``

Production whatsupd has no such hook; the operator shell's ``kill(pid)`` plays this role.
"""
import json
import os
import signal

import gevent

from whatsup.cli import whatsupd
from whatsup.node import Node

_start = Node.start


def start(node):
    _start(node)
    base = os.path.dirname(node.data_dir)

    def inject():
        with open(os.path.join(base, "fault")) as f:
            verb, kind, entity = f.read().split()
        place = node.where(kind, entity)
        while not place.get("up", True):  # restarting: wait for the new incarnation
            gevent.sleep(0.01)
            place = node.where(kind, entity)
        if verb == "crash":
            node.table.cast(place["pid"], ("injected-fault",))
        out = os.path.join(base, "fault.out")
        with open(out + ".tmp", "w") as f:
            json.dump({k: repr(v) if k == "pid" else v for k, v in place.items()}, f)
        os.replace(out + ".tmp", out)
    gevent.signal_handler(signal.SIGUSR1, lambda: gevent.spawn(inject))
    return node


Node.start = start

if __name__ == "__main__":
    whatsupd.main()
