"""Running the Alembic history from swim-as itself (``swim-as migrate``)."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at the shipped history."""
    config = Config()
    config.set_main_option("script_location", str(files("swim_as.migrations")))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> None:
    command.current(alembic_config(url))
