"""Storage: SQLAlchemy tables, sessions, queries and the content-addressed blob store."""
