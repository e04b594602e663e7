"""One file per schema revision, named ``NNNN_what.py``; Alembic skips this one."""
