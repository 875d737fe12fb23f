"""PostgreSQL adapters: pool, migrations, the tenant-scoped unit of work."""
