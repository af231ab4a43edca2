"""Accounts: users and their password hashes in sqlitedict (Mnesia's disc_copies role).

sqlite calls block, and sqlitedict's own worker thread would become a greenlet
under monkey-patching, so every store call runs on one dedicated native thread
and registrations are group-committed (one sqlite commit per batch, with
``PRAGMA synchronous=FULL`` so a registered user survives ``kill -9``). Password
hashing (scrypt) takes tens of milliseconds of CPU: it runs on its own native
threads, so a login storm cannot freeze the sessions. The set of user names is
kept in RAM, so checking a recipient costs no I/O.
"""
import base64
import hashlib
import hmac
import json
import os

from gevent.event import AsyncResult
from gevent.threadpool import ThreadPool
from sqlitedict import SqliteDict

from .batch import GroupCommitter

SCRYPT_R, SCRYPT_P = 8, 1


class UserTaken(Exception):
    """Registration of a name that already exists (or is being registered)."""


def _b64(raw):
    return base64.b64encode(raw).decode()


def hash_password(password, n, salt=None):
    """scrypt hash as ``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=256 * n * SCRYPT_R + 2 ** 20, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password, stored):
    """Constant-time comparison of ``password`` against a stored hash."""
    _, n, r, p, salt, digest = stored.split("$")
    n, r, p = int(n), int(r), int(p)
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=n, r=r, p=p,
                         maxmem=256 * n * r + 2 ** 20, dklen=32)
    return hmac.compare_digest(got, base64.b64decode(digest))


class AccountStore:
    """The account table. ``open()`` first; then call from greenlets (calls wait, the hub does not)."""

    def __init__(self, path, scrypt_n=2 ** 15, hash_threads=2):
        self.path = path
        self.scrypt_n = scrypt_n
        self.users = set()
        self._reserved = set()
        self._db = None
        self._db_pool = ThreadPool(1)
        self._hash_pool = ThreadPool(hash_threads)
        self._commits = None

    def __repr__(self):
        return f"<AccountStore {self.path} users={len(self.users)} registering={len(self._reserved)}>"

    def open(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._db_pool.apply(self._open)
        self._commits = GroupCommitter(self._db_pool, self._write, f"accounts {self.path}")
        return self

    def _open(self):
        self._db = SqliteDict(self.path, tablename="accounts", autocommit=False, journal_mode="WAL",
                              encode=json.dumps, decode=json.loads)
        self._db.conn.execute("PRAGMA synchronous=FULL")
        self._db.commit()
        self.users = set(self._db.keys())

    def close(self):
        if self._commits is not None:
            self._commits.stop()
        if self._db is not None:
            self._db_pool.apply(self._db.close)
        self._db_pool.kill()
        self._hash_pool.kill()

    def exists(self, user):
        return user in self.users

    def register(self, user, password):
        """Create ``user``; returns once it is durable. Raises UserTaken."""
        if user in self.users or user in self._reserved:
            raise UserTaken(user)
        self._reserved.add(user)
        try:
            stored = self._hash_pool.apply(hash_password, (password, self.scrypt_n))
            done = AsyncResult()
            self._commits.add((user, {"password": stored}), lambda err: done.set(err))
            err = done.get()
            if err is not None:
                raise err
            self.users.add(user)
        finally:
            self._reserved.discard(user)

    def _write(self, batch):
        for user, record in batch:
            self._db[user] = record
        self._db.commit()

    def verify(self, user, password):
        """True when ``user`` exists and ``password`` is theirs."""
        if user not in self.users:
            # Hash anyway so timing does not tell which names exist.
            self._hash_pool.apply(hash_password, (password, self.scrypt_n))
            return False
        record = self._db_pool.apply(self._db.get, (user,))
        if record is None:
            return False
        return self._hash_pool.apply(check_password, (password, record["password"]))
