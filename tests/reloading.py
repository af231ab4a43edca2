"""What the hot reload tests share: a copy of the package a node runs from, a v2 of the session
module to load into it, and a sender that keeps a connection busy meanwhile."""
import os
import shutil
import threading

import whatsup


def copy_package(directory):
    """A copy of the package under ``directory`` (a node started with it on PYTHONPATH runs it),
    so a test can rewrite its modules."""
    shutil.copytree(os.path.dirname(whatsup.__file__), directory / "whatsup",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return directory


def upgrade(path):
    """Session v2: pongs say their version; code_change records where a live state came from."""
    with open(path) as f:
        src = f.read()
    for old, new in [('    vsn = 1\n', '    vsn = 2\n\n    @staticmethod\n    def code_change(st, old_vsn):\n'
                      '        st.upgraded_from = old_vsn\n        return st\n'),
                     ('{"type": "pong", ', '{"type": "pong", "vsn": 2, ')]:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    with open(path, "w") as f:
        f.write(src)
    return src



class Chatter(threading.Thread):
    """alice keeps sending to ``to`` (or to ``group``; each send waits for its ✓) until told to stop."""

    def __init__(self, alice, group=None, to="bob"):
        super().__init__(daemon=True)
        self.alice, self.group, self.to, self.ids, self.error = alice, group, to, [], None
        self.stop, self.progress = threading.Event(), threading.Condition()

    def run(self):
        to = self.to if self.group is None else None
        try:
            while not self.stop.is_set() and len(self.ids) < 2000:
                n = f"n{len(self.ids)}"
                self.ids.append(self.alice.send(to, n, id=n, group=self.group)["id"])
                with self.progress:
                    self.progress.notify_all()
        except Exception as exc:  # reported by the test, not swallowed
            self.error = exc

    def wait_for(self, count):
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.ids) >= count or self.error, 30), self.ids
        assert self.error is None, self.error
