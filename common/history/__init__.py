"""The chat's history in SQL: the engine (db), the schema (models), its migrations (alembic).

Shared by the archiver, which writes it, and the web worker's admin console, which reads it;
nothing else touches the database.
"""
