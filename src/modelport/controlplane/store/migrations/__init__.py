"""Alembic migrations of the state store, applied by ``StateStore.open``.

A package (rather than a bare directory) so that type checking sees each
file under its own name; Alembic itself loads them by path.
"""
