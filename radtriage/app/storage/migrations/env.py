"""Alembic environment: runs on the engine handed over by `radtriage.app.storage.database.migrate`."""

from alembic import context
from sqlalchemy import create_engine

from radtriage.app.storage.schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # run from the alembic command line: alembic -x url=... upgrade head
    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
