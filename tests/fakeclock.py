"""A clock the test moves by hand, for the I/O-free cores that take ``clock=`` (no sleeping)."""


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now
