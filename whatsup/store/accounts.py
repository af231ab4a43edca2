"""Accounts: users and their password hashes in sqlitedict (Mnesia's disc_copies role).

The store is an industry (whatsup/runtime/industry.py) of ``accounts.shards``
shards: a user lives in ``accounts/shard-NNN.sqlite`` by a stable hash of the
name, and each shard is an :class:`AccountShardProc` process owning one
sqlite file on its own native writer thread. sqlite calls block, and
sqlitedict's own worker thread would become a greenlet under monkey-patching,
so every call of a shard runs on its thread and registrations are
group-committed (one commit per batch, ``PRAGMA synchronous=FULL`` so a
registered user survives ``kill -9``). A crashed shard is restarted and reopens
its file; the others keep serving.

Password hashing (scrypt) takes tens of milliseconds of CPU: a gen_factory of
:class:`Hasher` workers (``accounts.hash_threads``, least-loaded dispatch), each
with its own native thread, does it, so a login storm cannot freeze the
sessions; what may wait for them is bounded and fair between networks
(whatsup/c2s/admission.py), and a user who logged in lately with the same
password needs no hash at all. The set of user names is kept in RAM for the
whole node, so checking a recipient costs no I/O.

Devices (docs/PROTOCOL.md, "Devices"): the primary device is the account itself (its
credential is the password); the companions a user linked are one row per user in the
same table, under ``DEVICES + user`` (``#`` is never in a user name), each with its name,
times and the SHA-256 of its token (a token is 256 random bits: a fast hash suffices, and
a stolen file does not give it away). Those rows are loaded at start and kept in RAM
(only users who linked a device have one), so offd's ``devices`` callback and a
companion's login cost no I/O.
"""
import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time

from gevent.event import Event
from gevent.threadpool import ThreadPool

from ..c2s.admission import Admission, KnownLogins, Refused
from .datadir import check_shards
from ..observe.logs import Secret
from ..protocol import PRIMARY, Code
from ..runtime import CallTimeout, ProcessDead
from ..runtime.factory import Factory, ShardDown
from ..runtime.industry import Industry
from .tables import SqliteTable, durably, open_table

log = logging.getLogger("whatsup.accounts")
SCRYPT_R, SCRYPT_P = 8, 1
DEVICES = "#devices/"  # key prefix of a user's companion devices
PRIMARY_ONLY = (PRIMARY,)


class UserTaken(Exception):
    """Registration of a name that already exists (or is being registered)."""


class DeviceLimit(Exception):
    """The user already has devices.max_companions companions."""


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


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


def cost(stored):
    """The scrypt cost N a stored hash was made with."""
    return int(stored.split("$")[1])


def _lower_priority(nice):
    """Raise the nice value of the calling native thread by ``nice`` (Linux: a thread id is a pid)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.warning("hasher thread keeps its priority: %s", exc)


def shard_path(directory, i):
    return os.path.join(directory, f"shard-{i:03d}.sqlite")


def open_db(path):
    """The accounts table of one shard file (call on the shard's writer thread)."""
    return open_table(path, "accounts")


class AccountShard(SqliteTable):
    """One shard file's accounts table (a SqliteTable) on a writer thread of its own; :meth:`store`
    returns once the write is durable (a registration is answered only then)."""
    label = "accounts"

    def __init__(self, path):
        super().__init__(path, "accounts", ThreadPool(1))

    def open(self):
        """Open the file; returns (the user names it holds, {user: their companions' row})."""
        super().open()
        return self.pool.apply(self._load)

    def _load(self):
        users, devices = set(), {}
        for key in self._db.keys():
            if key.startswith(DEVICES):
                devices[key[len(DEVICES):]] = self._db[key]
            else:
                users.add(key)
        return users, devices

    def close(self):
        super().close()
        self.pool.kill()

    def store(self, user, record):
        """Store ``record`` (None deletes) for ``user``; returns once it is committed (raises what failed it)."""
        durably(self, user, record)

    def get(self, user):
        return self.pool.apply(self._db.get, (user,))


class AccountShardProc:
    """The process owning one account shard (gen_server callbacks)."""
    kind = "accounts"
    vsn = 1

    @staticmethod
    def init(proc, slot, store):
        shard = AccountShard(shard_path(store.dir, slot.shard))
        users, devices = shard.open()
        store.users |= users
        for user, row in devices.items():
            store.companions(user, row)
        slot.publish(proc.pid, shard)
        return (slot, shard)

    @staticmethod
    def describe(state):
        return {"shard": state[0].shard, "path": state[1].path}

    @staticmethod
    def terminate(proc, reason, state):
        slot, shard = state
        slot.withdraw()
        shard.close()


class Hasher:
    """A password-hashing worker: one native thread, one scrypt at a time, at a lower CPU
    priority (``nice``) than the hub: scrypt releases the GIL, and two hashers busy with a
    login storm took both cores of a 2-core machine from the hub (bystanders' p99 190 ms,
    ops/attack.py). The hub is latency-bound, hashing is throughput-bound."""
    kind = "hasher"
    vsn = 1

    @staticmethod
    def init(proc, slot, nice=0):
        pool = ThreadPool(1)
        if nice:
            pool.apply(_lower_priority, (nice,))
        return pool

    @staticmethod
    def handle_call(proc, request, pool):
        op, secret = request  # (password, scrypt cost or stored hash): never in a crash report
        if op == "hash":
            return pool.apply(hash_password, secret.value), pool
        if op == "check":
            return pool.apply(check_password, secret.value), pool
        raise ValueError(f"hasher: unexpected call {op!r}")

    @staticmethod
    def terminate(proc, reason, pool):
        pool.kill()


class AccountStore:
    """The accounts industry. ``check()``, start ``children()`` under a supervisor, then call
    from greenlets (calls wait, the hub does not).

    Every scrypt goes through ``admission`` (whatsup/c2s/admission.py): a login or registration
    that cannot be admitted now raises Refused at once instead of queueing; ``known`` lets a
    user who logged in lately with the same password in without hashing; ``registrations``
    limits registrations per address (a KeyedLimiter; None: no limit). ``timeouts`` are
    (auth.wait_timeout, auth.hash_timeout): admission keeps each hasher's mailbox about one
    deep and the queue bounded, so either one running out means something is stuck."""

    def __init__(self, table, directory, shards=1, scrypt_n=2 ** 15, hash_threads=2, restart_wait=5.0,
                 admission=None, known=None, registrations=None, hash_nice=0, timeouts=(30.0, 30.0)):
        self.dir = directory
        self.scrypt_n = scrypt_n
        self.wait_timeout, self.hash_timeout = timeouts
        self.users = set()
        self._reserved = set()
        self._devices = {}  # user -> companions' row {"next": id, "devices": {str(id): {...}}}: linked ones
        self._ids = {}      # user -> (PRIMARY, companion ids...): offd's callback, one lookup
        self.industry = Industry(table, "accounts", shards, AccountShardProc, (self,),
                                 paths=[shard_path(directory, i) for i in range(shards)], wait=restart_wait)
        self.hashers = Factory(table, "hasher", Hasher, hash_threads, (hash_nice,), policy="least_loaded")
        self.admission = admission if admission is not None else Admission(hash_threads, 64, 16, 64)
        self.known = known if known is not None else KnownLogins(0, 0.0)  # has a len: test for None
        self.registrations = registrations
        self.away = None  # in a cluster (whatsup/cluster/homes.py): the records of users homed elsewhere

    def __repr__(self):
        return (f"<AccountStore {self.dir} shards={len(self.industry)} users={len(self.users)} "
                f"registering={len(self._reserved)} {self.admission!r} {self.known!r}>")

    def check(self):
        check_shards(self.dir, len(self.industry), "accounts.shards")
        return self

    def children(self):
        return self.industry.children() + self.hashers.children()

    def shard(self, user):
        """The AccountShard holding ``user``; waits for a restarting shard, else ShardDown."""
        return self.industry.resource(user)

    def exists(self, user):
        return user in self.users

    def register(self, user, password, ip, limited=True):
        """Create ``user``; returns once it is durable. Raises UserTaken, Refused, ShardDown, OSError.
        ``limited=False`` (the operator's registrations) skips the per-address registration limit."""
        limit = self.registrations if limited else None
        if limit is not None and not limit.allowed(ip):
            raise Refused(Code.TOO_MANY_ATTEMPTS, "too many registrations from this address lately",
                          round(limit.window / max(limit.count, 1), 1))
        if user in self.users or user in self._reserved:
            raise UserTaken(user)
        self._reserved.add(user)
        try:
            stored = self._hash(ip, "hash", password, self.scrypt_n)
            if limit is not None:
                limit.charge(ip)
            self._put(user, {"password": stored}, new=True)
            self.users.add(user)
        finally:
            self._reserved.discard(user)

    def verify(self, user, password, ip):
        """True when ``user`` exists and ``password`` is theirs. Raises Refused, ShardDown."""
        if self.known.check(user, password):
            return True
        if user not in self.users:
            if self.away is not None and not self.away.knows(user):  # a cluster node just started
                raise ShardDown(f"the users of {user!r}'s home are not known here yet; retry")
            # Hash anyway so timing does not tell which names exist.
            self._hash(ip, "hash", password, self.scrypt_n)
            return False
        record = self._get(user)
        if record is None:
            return False
        verified = self._hash(ip, "check", password, record["password"])
        if verified:
            if cost(record["password"]) != self.scrypt_n:  # accounts.scrypt_n changed: rehash now
                self._store_password(user, password, record, ip)
            self.known.remember(user, password)
        return verified

    def forget(self, user):
        """``user``'s password changed or the account is gone: no login on the old password."""
        self.known.forget(user)

    def record(self, user):
        """``user``'s stored record (None if unknown): what an operator may see, without the hash
        itself but with its scrypt cost."""
        record = self._get(user) if user in self.users else None
        if record is None:
            return None
        return {**{k: v for k, v in record.items() if k != "password"}, "scrypt_n": cost(record["password"])}

    def set_password(self, user, password, ip):
        """Replace ``user``'s password (KeyError if unknown); returns once it is durable. The hash
        is admitted as ``ip``'s (Refused if it cannot be now)."""
        record = self._get(user) if user in self.users else None
        if record is None:
            raise KeyError(user)
        self._store_password(user, password, record, ip)
        self.forget(user)

    def delete(self, user):
        """Delete ``user``'s account (a no-op if unknown); returns once it is durable."""
        if user in self.users:
            self.users.discard(user)  # first: from here on nobody can log in or write to them
            self.forget(user)
            self._put(user, None)
            if user in self._devices:
                self._store_devices(user, None)
                self.companions(user, None)

    # --- devices -------------------------------------------------------------------

    def devices(self, user):
        """The ids of ``user``'s linked devices, the primary first (RAM only: offd's callback)."""
        return self._ids.get(user, PRIMARY_ONLY)

    def device_list(self, user):
        """``user``'s devices as the ``devices`` frame lists them (without ``online``)."""
        row = self._devices.get(user, {"devices": {}})
        return [{"device": PRIMARY, "name": "primary"}] + [
            {"device": int(d), "name": v["name"], "created": v["created"], "last_seen": v["last_seen"]}
            for d, v in sorted(row["devices"].items(), key=lambda kv: int(kv[0]))]

    def link(self, user, name, limit):
        """A new companion of ``user`` named ``name``: returns (its id, its token) once durable.
        Raises DeviceLimit at ``limit`` companions, Refused while another link of the user runs."""
        if user in self._reserved:
            raise Refused(Code.BUSY, "another registration or link of this user is in progress", 1.0)
        row = self._devices.get(user, {"next": PRIMARY + 1, "devices": {}})
        if len(row["devices"]) >= limit:
            raise DeviceLimit(user)
        device, token, now = row["next"], secrets.token_urlsafe(32), round(time.time(), 3)
        new = {"next": device + 1, "devices": {**row["devices"], str(device): {
            "name": name, "token": token_hash(token), "created": now, "last_seen": now}}}
        self._reserved.add(user)
        try:
            self._store_devices(user, new)
        finally:
            self._reserved.discard(user)
        self.companions(user, new)
        return device, token

    def unlink(self, user, device):
        """Revoke companion ``device`` of ``user``; False if it is not linked. Returns once durable."""
        row = self._devices.get(user)
        if row is None or str(device) not in row["devices"]:
            return False
        left = {d: v for d, v in row["devices"].items() if d != str(device)}
        new = {"next": row["next"], "devices": left}
        self.companions(user, new)  # first: from here on its token is refused
        self._store_devices(user, new)
        return True

    def verify_device(self, user, device, token):
        """True when ``token`` is companion ``device``'s of ``user`` (RAM only, constant time)."""
        return self.device_token(user, device, token_hash(token))

    def device_token(self, user, device, hashed):
        """True when ``hashed`` is the hash of companion ``device``'s token. In a cluster a device
        this node does not know yet (the row's copy is on its way from the user's home, a device
        linked a moment ago on another node) is asked of the home: only the hash travels."""
        row = self._devices.get(user)
        entry = row["devices"].get(str(device)) if row is not None else None
        if entry is None and not self.here(user):
            return self.away.device_token(user, device, hashed)
        return entry is not None and hmac.compare_digest(entry["token"], hashed)

    def seen(self, user, device, stale=0.0):
        """Companion ``device`` of ``user`` logged in now: its last_seen, stored (durably) when
        the stored one is over ``stale`` seconds old."""
        row = self._devices.get(user)
        entry = row["devices"].get(str(device)) if row is not None else None
        if entry is not None and time.time() - entry["last_seen"] > stale:
            # a new row: the writer thread may be encoding the old one
            row = {**row, "devices": {**row["devices"], str(device): {**entry, "last_seen": round(time.time(), 3)}}}
            self.companions(user, row)
            self._store_devices(user, row)

    def inactive(self, user, before):
        """The companions of ``user`` not seen since ``before`` (a time)."""
        row = self._devices.get(user)
        return [int(d) for d, v in row["devices"].items() if v["last_seen"] < before] if row else []

    def rows(self, user):
        """``user``'s companions' row (None: they never linked one)."""
        return self._devices.get(user)

    def linked(self):
        """The users who have a companions' row (who linked a device once)."""
        return list(self._devices)

    def _store_devices(self, user, row):
        """Store ``user``'s companions' row durably (None deletes it); in a cluster every other
        node holds a copy (their home stores it: link, unlink... run there)."""
        self.shard(user).store(DEVICES + user, row)
        if self.away is not None:
            self.away.share_devices(user, row)

    def companions(self, user, row):
        """Set ``user``'s companions' row in RAM (None: none left)."""
        if row is None or not row["devices"]:
            self._devices.pop(user, None)
            self._ids.pop(user, None)
            if row is not None:
                self._devices[user] = row  # keeps "next": an id is never given twice
        else:
            self._devices[user] = row
            self._ids[user] = (PRIMARY, *sorted(int(d) for d in row["devices"]))

    def _store_password(self, user, password, record, ip):
        self._put(user, {**record, "password": self._hash(ip, "hash", password, self.scrypt_n)})

    # --- where a record lives: here, or (in a cluster) on the user's home node -------------

    def here(self, user):
        return self.away is None or self.away.here(user)

    def _get(self, user):
        return self.shard(user).get(user) if self.here(user) else self.away.record(user)

    def _put(self, user, record, new=False):
        if self.here(user):
            self.store(user, record)
        else:
            self.away.store(user, record, new)

    def stored(self, user):
        """The record of ``user`` (homed here) with its hash, for the node a session logs in on."""
        return self.shard(user).get(user) if user in self.users else None

    def store(self, user, record, new=False):
        """Write ``record`` (None deletes) for ``user`` (homed here); ``new``: UserTaken if the
        name exists. In a cluster every other node learns the name (or its end)."""
        if new and user in self.users and self.away is not None and self.away.here(user):
            raise UserTaken(user)
        self.shard(user).store(user, record)
        if self.away is not None:
            (self.users.add if record is not None else self.users.discard)(user)
            self.away.announce(user, record is not None)

    def own(self):
        """The names of the users homed here."""
        return [u for u in self.users if self.here(u)]

    def _hash(self, ip, op, password, arg):
        """One scrypt for a client at ``ip``, once admitted (Refused if not)."""
        ticket = self.admission.enter(ip)
        try:
            if not ticket.running:
                ticket.wake = Event()
                if not ticket.wake.wait(self.wait_timeout):
                    raise Refused(Code.BUSY, "no password check within its time", self.admission.retry_after())
            return self.hashers.call(None, (op, Secret((password, arg))), self.hash_timeout)
        except (CallTimeout, ProcessDead) as exc:  # a hasher that failed costs a retry, not a session
            log.warning("password %s not done: %s", op, exc)
            raise Refused(Code.BUSY, f"no password check now ({type(exc).__name__})",
                          self.industry.wait) from None
        finally:
            following = self.admission.leave(ticket)
            if following is not None:
                following.wake.set()
