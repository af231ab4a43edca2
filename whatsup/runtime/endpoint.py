"""A side server of the node, outside the supervision tree: the operator shell, the metrics scrape.

Both start before the tree (an operator can look into a slow recovery) and stop
after it, so they are not processes of it; they share one contract instead:
``start`` serves on the ``listen`` setting (a no-op when it says off) or raises
ConfigError in one line; ``stop`` is idempotent; ``address`` is where it
listens, None when off or stopped; ``repr`` says so.
"""
from ..config import ConfigError


class Endpoint:
    """Subclasses name ``what`` they serve and build their (unstarted) gevent server in
    :meth:`_server`, returning None when the setting turns it off."""
    what = "a side server"

    def __init__(self, node, listen):
        self.node, self.listen = node, listen
        self.server = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.address or 'off'}>"

    @property
    def address(self):
        if self.server is None:
            return None
        host, port = self.server.address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self):
        try:
            server = self._server()
            if server is not None:
                server.start()
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot serve {self.what} on {self.listen!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        self.server = server
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    def _server(self):
        raise NotImplementedError
