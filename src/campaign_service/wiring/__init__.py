"""How each adapter family is built from Settings and for how long it lives.

Each module opens one family (database, Redis, token verification, events, servers) as an async
context manager: entering opens it, leaving closes it. `bootstrap.build_app` enters them in order
on one exit stack. They live here rather than inside `adapters/` because they read `Settings` and
join several adapters (and `api/` for the servers), which the adapters themselves never do.
"""
