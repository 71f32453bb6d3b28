"""Index port: the relational index (SQLAlchemy Core) behind the services.

``engine.open_database`` creates the process's engine; ``migrate.upgrade`` brings the
schema to the current Alembic revision; the other modules hold the queries of one
concept each (facilities and nodes, instances, audit events).
"""
