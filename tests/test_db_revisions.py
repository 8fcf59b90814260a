"""The schema's newest revision, as the database engine knows it without loading Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from blockyard.db.engine import HEAD_REVISION, MIGRATIONS, Database


def test_head_revision_is_the_newest_migration() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [HEAD_REVISION]


def test_a_new_database_is_migrated_and_then_left_alone(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert db.revisions() == []
        db.migrate()
        assert db.revisions() == [HEAD_REVISION]
        db.migrate()  # at head: nothing to do
        assert db.revisions() == [HEAD_REVISION]
    finally:
        db.dispose()
