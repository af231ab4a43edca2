"""Progress of a long command: a bar redrawn in place on a terminal, a line now and then otherwise
(a log file or a pipe should not fill with carriage returns)."""
import sys
import time


class Progress:
    """``step(label, done, total)`` as work advances; ``close()`` ends the bar's line."""
    WIDTH = 30

    def __init__(self, stream=None, every=5.0, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every, self.clock = every, clock
        self._last = None  # when the last periodic line was written
        self._drawn = False

    def step(self, label, done, total):
        share = done / total if total else 1.0
        if self.tty:
            filled = round(self.WIDTH * share)
            self.stream.write(f"\r[{'#' * filled}{' ' * (self.WIDTH - filled)}] {share:4.0%} {label}\x1b[K")
            self._drawn = True
        else:
            now = self.clock()
            if self._last is not None and now - self._last < self.every and done < total:
                return
            self._last = now
            self.stream.write(f"{label}: {done}/{total} ({share:.0%})\n")
        self.stream.flush()

    def close(self):
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
