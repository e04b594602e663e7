"""Batches over files: readers, writers and the row ↔ tensor conversion.

Shared by the client-side ``modelport batch`` (cli/batch*.py) and the
server's batch jobs (controlplane/batch_jobs.py), so a file gives the same
rows, errors and output whichever side runs it. Nothing here talks to a
server or imports the command line.
"""
