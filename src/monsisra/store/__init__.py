"""Persistence: SQLAlchemy models, queries, migrations, blobs."""
