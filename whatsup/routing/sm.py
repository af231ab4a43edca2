"""Session manager: which session process serves which user, in RAM (ejabberd_sm, ram_copies).

One session per user: a second login replaces the first (the router tells the
old one, which answers its device with ``replaced`` and closes).
"""


class SessionManager:
    def __init__(self):
        self.sessions = {}  # user -> Pid

    def __repr__(self):
        return f"<SessionManager online={len(self.sessions)}>"

    def __len__(self):
        return len(self.sessions)

    def lookup(self, user):
        return self.sessions.get(user)

    def register(self, user, pid):
        """Make ``pid`` the user's session; returns the pid it replaces, if any."""
        old = self.sessions.get(user)
        self.sessions[user] = pid
        return old if old != pid else None

    def unregister(self, user, pid):
        """Forget ``pid`` as the user's session unless a newer one already replaced it.

        True when the user is now offline.
        """
        if self.sessions.get(user) == pid:
            del self.sessions[user]
            return True
        return False
