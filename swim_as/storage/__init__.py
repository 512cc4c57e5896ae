"""Storage: SQLAlchemy models, repositories, migrations (D11)."""
