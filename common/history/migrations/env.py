"""Alembic environment: the URL comes from the project's configuration (DATABASE_URL)."""
from alembic import context

from common.history.db import make_engine
from common.history.models import Base

cfg = context.config
url = cfg.get_main_option("sqlalchemy.url")
if not url:
    from common import config as app_config

    url = app_config.load().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
