"""Alembic migration history of swim-as (shipped as ``swim_as.migrations``)."""
