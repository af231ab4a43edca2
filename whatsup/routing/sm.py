"""Session manager: which session process serves which device of which user, in RAM
(ejabberd_sm, ram_copies).

A user may have several devices online at once (docs/PROTOCOL.md, "Devices"); each
device has one session: a second login of the *same* device replaces the first (the
router tells the old one, which answers its device with ``replaced`` and closes).
A user is online while any of their devices is.
"""


class SessionManager:
    def __init__(self):
        self.sessions = {}  # user -> {device: Pid}
        self.placed = None  # in a cluster: callable(user, pid, here) writing the directory (cluster/homes.py)

    def __repr__(self):
        return f"<SessionManager online={len(self.sessions)} connections={self.connections()}>"

    def __len__(self):
        """Users online."""
        return len(self.sessions)

    def users(self):
        """The users online (a copy: the caller may yield while it walks them)."""
        return list(self.sessions)

    def connections(self):
        return sum(len(devices) for devices in self.sessions.values())

    def lookup(self, user, device=None):
        """The session of ``device`` of ``user``; without ``device``, one of the user's sessions
        (None: offline)."""
        devices = self.sessions.get(user)
        if not devices:
            return None
        if device is None:
            return next(iter(devices.values()))
        return devices.get(device)

    def pids(self, user):
        """Every session of ``user``, one per device online."""
        devices = self.sessions.get(user)
        return list(devices.values()) if devices else []

    def devices(self, user):
        """{device: Pid} of ``user``'s devices online."""
        return dict(self.sessions.get(user, ()))

    def register(self, user, device, pid):
        """Make ``pid`` the session of ``device`` of ``user``; returns the pid it replaces, if any."""
        devices = self.sessions.setdefault(user, {})
        old = devices.get(device)
        devices[device] = pid
        if self.placed is not None:
            self.placed(user, pid, True)
        return old if old != pid else None

    def unregister(self, user, device, pid):
        """Forget ``pid`` as that device's session unless a newer one already replaced it.

        True when the user is now offline (none of their devices is online).
        """
        devices = self.sessions.get(user)
        if devices is None or devices.get(device) != pid:
            return False
        del devices[device]
        if self.placed is not None:
            self.placed(user, pid, False)
        if devices:
            return False
        del self.sessions[user]
        return True
