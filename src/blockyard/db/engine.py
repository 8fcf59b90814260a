"""The database: engine set-up, migrations on start, and read/write sessions.

SQLite (the embedded default) runs in WAL mode. Its write transactions start with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of one failing with
"database is locked" when it upgrades a read lock; read transactions stay deferred and run in
parallel with a writer. Any other SQLAlchemy URL (PostgreSQL) gets the ordinary behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
#: seconds between WAL checkpoints (SQLite)
CHECKPOINT_INTERVAL = 1.0

log = logging.getLogger(__name__)


#: the newest migration under migrations/versions (tests/test_db_revisions.py keeps the two
#: in step): a database recording it needs no migration
HEAD_REVISION = "0005"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (WAL is fsynced at checkpoints)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # checkpoints run on Database's own thread, never inside a request's COMMIT
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Owns the engine and hands out sessions: `read()` for queries, `write()` for changes."""

    def __init__(self, url: str) -> None:
        self.url = url
        # every session and connection here ends in an explicit commit or rollback, so the
        # pool's own rollback on check-in would only cost a statement per transaction
        kwargs: dict[str, Any] = {"pool_reset_on_return": None}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 16
            kwargs["max_overflow"] = 32
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            _sqlite_setup(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(immediate=True), expire_on_commit=False
        )
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if url.startswith("sqlite") else contextlib.nullcontext()
        )

    def start_checkpoints(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Copy the WAL back into the database file every `interval` seconds, on a thread of
        its own (SQLite only), so that no request pays for a checkpoint's writes and fsync."""
        if not self.url.startswith("sqlite") or self._checkpointer is not None:
            return

        def run() -> None:
            while not self._stopping.wait(interval):
                try:
                    with self.engine.connect() as conn:
                        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                except Exception:  # noqa: BLE001 - try again next round
                    log.warning("WAL checkpoint failed", exc_info=True)

        self._checkpointer = threading.Thread(target=run, name="wal-checkpoint", daemon=True)
        self._checkpointer.start()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        A database already at `HEAD_REVISION` is left alone without loading Alembic, whose
        import alone costs about a third of a second of every (re)start."""
        if self.revisions() == [HEAD_REVISION]:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revisions(self) -> list[str]:
        """The Alembic revisions the database records (none for a new database)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return []
            return list(conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                        .scalars())

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A bare connection in a read transaction, for the prebuilt Core reads of hot paths."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @property
    def inline(self) -> bool:
        """May the API run its database work on the event loop? True for SQLite: a reader in
        WAL mode never waits, a writer waits only for this process's write lock (held for
        well under a millisecond: no checkpoint runs inside a commit), and a thread hand-off
        costs more than the work itself. A networked database is used from worker threads."""
        return self.url.startswith("sqlite")

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on leaving the block and rolls back on an exception.

        On SQLite, writers of this process queue on a lock first: SQLite's own busy handler
        waits by sleeping in growing steps (up to 100 ms), so waiters there wake late, while
        a lock hands over at once. Other processes still meet the busy timeout.
        """
        with self._write_lock, self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(10)
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        self.engine.dispose()
