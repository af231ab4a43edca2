"""The data dir's guards: one live owner at a time, and the shard count each store was written with.

* ``lock(data_dir)``: an exclusive ``flock`` on ``data_dir/LOCK``, held by a
  running whatsupd (and by whatsup-reshard while it works), so an offline tool
  never touches the files of a live node and two nodes never share a spool.
  The kernel drops the lock when the process dies, even by ``kill -9``.
* ``secure(data_dir)``: password hashes and the social graph are for the node's
  user only: the process umask becomes 077 (every file the node makes is 0600,
  every directory 0700: sqlite files with their WAL/SHM, offd segments, ID,
  LOCK, the backdoor socket), what an older version or another umask left is
  tightened, and a data dir other users can write is refused in one line.
* ``identity(data_dir)``: the data dir's random id, announced in ``hello``.
* ``check_shards(directory, shards, setting)``: a store directory remembers its
  shard count in a ``SHARDS`` file; opening it with another count is refused
  with a one-line message naming whatsup-reshard, because users would silently
  land on shards that do not hold their data. So is a data dir holding the
  journal of an unfinished reshard (``RESHARDING``) or move (``MOVING``).
"""
import fcntl
import os
import uuid

LOCK = "LOCK"
IDENTITY = "ID"
RESHARDING = "RESHARDING"
MOVING = "MOVING"  # whatsup-reshard move's journal (whatsup/cluster/move.py)
DEFAULT_SHARDS = 4


class DataDirBusy(Exception):
    """Another process holds the data dir."""


class ShardMismatch(Exception):
    """A store was written with another shard count than the config says."""


class InsecureDataDir(Exception):
    """The data dir can be written by other users (or belongs to another user)."""


def secure(data_dir):
    """Make ``data_dir`` and everything in it owner-only (see the module docstring)."""
    os.umask(0o077)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    st = os.stat(data_dir)
    if st.st_uid != os.geteuid():
        raise InsecureDataDir(f"data dir {data_dir} belongs to uid {st.st_uid}, not to this user; "
                              f"refusing to start")
    if st.st_mode & 0o022:
        raise InsecureDataDir(f"data dir {data_dir} is writable by other users (mode "
                              f"{st.st_mode & 0o777:o}); run chmod 700 on it and start again")
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name, mode in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


def lock(data_dir):
    """Take the data dir's lock; returns the open file (keep it open to keep the lock)."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LOCK)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise DataDirBusy(f"data dir {data_dir} is in use by process {owner} "
                          f"(a running whatsupd or whatsup-reshard)") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def identity(data_dir):
    """This data dir's random id, made at its first start: devices key their saved state
    (last seq, messages seen) by it, so a new data dir on an old address starts them afresh."""
    path = os.path.join(data_dir, IDENTITY)
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        write_marker(path, uuid.uuid4().hex)
        return identity(data_dir)


def write_marker(path, text):
    """Write a small file durably (temp file, fsync, rename, fsync the directory)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_shards(directory):
    """The shard count recorded in ``directory``, or None for a store never opened."""
    try:
        with open(os.path.join(directory, "SHARDS")) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, NotADirectoryError):
        return None


def shard_count(directory, configured):
    """The shard count a store opens with: the configured one, else (0) the one ``directory``
    was written with, else DEFAULT_SHARDS for a new store; so a node that ran without a config
    file keeps running without one after a reshard."""
    return configured or read_shards(directory) or DEFAULT_SHARDS


def check_shards(directory, shards, setting):
    """Refuse a store written with another shard count; record the count of a new one."""
    data_dir = os.path.dirname(directory)
    if os.path.exists(os.path.join(data_dir, RESHARDING)):
        raise ShardMismatch(f"{data_dir} holds an interrupted whatsup-reshard run; run it again to finish "
                            f"or roll back")
    if os.path.exists(os.path.join(data_dir, MOVING)):
        raise ShardMismatch(f"{data_dir} takes part in an unfinished whatsup-reshard move; run it again "
                            f"to finish or roll back")
    os.makedirs(directory, exist_ok=True)
    found = read_shards(directory)
    if found is None:
        write_marker(os.path.join(directory, "SHARDS"), f"{shards}\n")
    elif found != shards:
        raise ShardMismatch(f"{directory} has {found} shards but {setting} says {shards}; reshard it "
                            f"with whatsup-reshard (server stopped) or set {setting} = {found}")


def fill(db, rows):
    """Write ``rows`` into the open SqliteDict ``db`` in one commit, then close it (the offline
    tools that rebuild a store: whatsup-reshard and its ``move``)."""
    try:
        for key, value in rows.items():
            db[key] = value
        db.commit()
    finally:
        db.close()
