"""The merchant-scoped repositories on PostgreSQL, one module each; `tenant.PgUnitOfWork` opens
the transaction (with `app.merchant_id` set, so RLS applies) they all run in."""
