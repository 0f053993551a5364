"""Schema migrations (alembic), run by `make migrate`, and on start by the embedded default.

alembic's own INFO lines (its plugins, "Context impl SQLiteImpl.", "Will assume non-transactional
DDL.", "Running upgrade ...") are kept quiet; upgrade() logs one line of ours instead:
`schema at <revision>` (and the revision it came from when it changed). Its warnings still show.
"""
from __future__ import annotations

import logging
from pathlib import Path

# before alembic is imported: it logs its plugins' set-up (INFO) at import
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("common.history.migrate")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revision(url: str) -> str | None:
    """The database's schema revision, None when it has none yet."""
    from common.history.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Bring the schema to `revision`; log `schema at <revision>` and return it."""
    before = current_revision(url)
    command.upgrade(alembic_config(url), revision)
    after = current_revision(url)
    if before == after:
        log.info("schema at %s", after)
    else:
        log.info("schema at %s (upgraded from %s)", after, before or "an empty database")
    return after
