"""Small durable tables (groups, blocks, privacy), in their own sqlite file.

The groups, blocking and presence modules hold their data in RAM and only need
three things from a store: load everything at start, write a changed record,
and hear when it is durable. :class:`Table` is that contract, so the records
can move (into the account shards, say) without those modules changing.

:class:`SqliteTable` is one sqlitedict table (json codec, never pickle,
``synchronous=FULL``); the tables of one file share one native writer thread
and each group-commits its writes, as the account shards do.
:class:`TableStore` is the process that owns the file in the supervision
tree: its ``init`` opens every table and hands it to its loader (e.g.
``Groups.open``), so a restart reloads the modules from disk.
"""
import json
import os
from typing import Callable, Optional, Protocol

from gevent.event import AsyncResult
from gevent.threadpool import ThreadPool
from sqlitedict import SqliteDict

from .batch import GroupCommitter


def open_table(path, name):
    """Table ``name`` of the sqlite file ``path``: JSON codec (never pickle), manual commits, WAL,
    ``synchronous=FULL`` (sqlitedict turns fsync off by default; a commit must survive kill -9).
    It blocks: call it on the owner's native thread, never on the hub."""
    db = SqliteDict(path, encode=json.dumps, decode=json.loads, tablename=name, autocommit=False,
                    journal_mode="WAL")
    db.conn.execute("PRAGMA synchronous=FULL")
    db.commit()
    return db


class Table(Protocol):
    def load(self) -> dict:
        """Every key and its value (blocks the calling greenlet, never the hub)."""

    def put(self, key: str, value, on_durable: Optional[Callable] = None) -> None:
        """Store ``value`` (JSON-able; None deletes) under ``key``; ``on_durable(err)`` on the hub later."""


def durably(table, key, value):
    """``table.put`` and wait (this greenlet, not the hub) until it is durable; raises what failed it."""
    done = AsyncResult()
    table.put(key, value, done.set)
    err = done.get()
    if err is not None:
        raise err


class Records(dict):
    """One Table's records held in RAM and written through: the state of a service that loads a
    small table at each (re)start of the table's owner (push tokens, invites)."""
    table = None

    def __repr__(self):
        return f"<Records {len(self)}>"  # never the values: tokens are secrets

    def open(self, table):
        """Hold what ``table`` has, and write there from now on."""
        self.clear()
        self.update(table.load())
        self.table = table
        return self

    def store(self, key, value):
        """``value`` (None deletes) under ``key``, durably first; returns once it is."""
        durably(self.table, key, value)
        if value is None:
            self.pop(key, None)
        else:
            self[key] = value

    def save(self, key):
        """Write ``key``'s value as it is now in RAM (changed in place); returns once it is durable."""
        durably(self.table, key, self[key])


class SqliteTable:
    """A Table in ``path`` named ``name``; every sqlite call runs on ``pool`` (one native thread)."""
    label = "table"  # the store label of its commit metrics (whatsup/observe/latency.py)

    def __init__(self, path, name, pool):
        self.path, self.name, self.pool = path, name, pool
        self._db = None
        self._commits = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.path}:{self.name} {self._commits!r}>"

    def open(self):
        self.pool.apply(self._open)
        self._commits = GroupCommitter(self.pool, self._write, f"{self.label} {self.path}:{self.name}")
        return self

    def _open(self):
        self._db = open_table(self.path, self.name)

    def close(self):
        if self._commits is not None:
            self._commits.stop()
        if self._db is not None:
            self.pool.apply(self._db.close)

    def load(self):
        return self.pool.apply(lambda: dict(self._db.items()))

    def put(self, key, value, on_durable=None):
        self._commits.add((key, value), on_durable)

    def _write(self, batch):
        for key, value in batch:
            if value is None:
                self._db.pop(key, None)
            else:
                self._db[key] = value
        self._db.commit()


class TableStore:
    """The process owning one tables file (gen_server callbacks).

    ``init(proc, path, loaders)``: ``loaders`` maps a table name to a callable
    taking the opened Table.
    """
    kind = "tables"
    vsn = 1

    @staticmethod
    def init(proc, path, loaders):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pool = ThreadPool(1)
        tables = [SqliteTable(path, name, pool).open() for name in loaders]
        for table in tables:
            loaders[table.name](table)
        return pool, tables

    @staticmethod
    def describe(state):
        return {"tables": [repr(t) for t in state[1]]}

    @staticmethod
    def terminate(proc, reason, state):
        pool, tables = state
        for table in tables:
            table.close()
        pool.kill()
