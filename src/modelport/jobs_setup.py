"""Composing asynchronous inference for the server: the job store, its runner, the settings.

The runner is at once the transport's ``JobQueue`` (``Prefer: respond-async``
requests are submitted to it), the management API's view of the caller's
jobs, and a task in the server's task group that claims and runs queued
jobs. Every worker of a node builds its own runner over the shared store;
the store's claims keep a job on one of them at a time. With
``job_callback_hosts`` set the runner also sends callbacks; with
``batch_dir`` set it runs batch jobs over the files there.

Only the composition root imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.clock import Clock
from modelport.config.server import ServerConfig
from modelport.controlplane.batch_jobs import BatchFiles, BatchRunner
from modelport.controlplane.callbacks import CallbackPolicy, CallbackSender
from modelport.controlplane.jobs import JobRunner, JobSettings, pipeline_executor
from modelport.controlplane.store import Database, JobStore
from modelport.dataplane.pipeline import Pipeline
from modelport.errors import ModelportError


def build_jobs(
    config: ServerConfig,
    database: Database,
    pipeline: Pipeline,
    status_of: Callable[[ModelportError], int],
    clock: Clock | None = None,
) -> JobRunner:
    """The job runner over ``database``; ``status_of``: the REST transport's error table,
    so a failed job keeps the status its synchronous call would have had."""
    execute = pipeline_executor(pipeline, config.max_elements, status_of)
    settings = JobSettings(retention_s=config.job_retention_s)
    store = JobStore(database)
    callbacks = None
    secret = config.job_callback_secret
    if config.job_callback_hosts and secret is not None:
        policy = CallbackPolicy(config.job_callback_hosts, secret.get_secret_value().encode())
        callbacks = CallbackSender(store, policy, clock=clock)
    batches = None
    if config.batch_dir is not None:
        files = BatchFiles(config.batch_dir)
        batches = BatchRunner(files, pipeline, store, config.max_elements, status_of)
    return JobRunner(store, execute, settings, clock=clock, callbacks=callbacks, batches=batches)
