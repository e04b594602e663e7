"""/api/v1/jobs: the caller's asynchronous inference jobs (docs/jobs.md).

Every route needs the invoker role, the one that submits jobs, and answers
only for the caller's own jobs: another caller's job id is a 404 like an id
that never existed, so ids reveal nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Path, Query, Response
from pydantic import BaseModel, Field
from starlette.requests import Request

from modelport.controlplane.jobs import JobRunner
from modelport.controlplane.store.jobs import CANCELLED, SUCCEEDED, StoredJob
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.errors import Conflict
from modelport.types import Identity, Role

JobId = Annotated[str, Path(min_length=1, max_length=64, description="Job id")]


class JobState(BaseModel):
    """One job: where it stands, what it runs, and when it moved."""

    id: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    model: str
    version: str | None = Field(
        description="The version asked for; once succeeded, the one that answered"
    )
    created: datetime
    started: datetime | None
    finished: datetime | None
    status: int | None = Field(description="The HTTP status of the result, once finished")
    error: str | None = Field(description="Why a failed job failed")


class JobList(BaseModel):
    jobs: list[JobState]
    next_offset: int | None = Field(description="The offset of the next page; null on the last")


def job_state(job: StoredJob) -> JobState:
    return JobState(
        id=job.id,
        state=job.state,
        model=job.model,
        version=job.version,
        created=job.created_at,
        started=job.started_at,
        finished=job.finished_at,
        status=job.status,
        error=job.error,
    )


def _caller(request: Request) -> Identity | None:
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    return identity if isinstance(identity, Identity) else None


def add_job_routes(api: FastAPI, jobs: JobRunner) -> None:
    """The jobs routes, on the management app (so they share its checks and errors)."""

    @api.get("/jobs", response_model=JobList, summary="The caller's jobs, newest first")
    @needs(Role.INVOKER)
    async def list_jobs(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> JobList:
        found = await jobs.list_for(_caller(request), limit=limit + 1, offset=offset)
        more = len(found) > limit
        return JobList(
            jobs=[job_state(j) for j in found[:limit]],
            next_offset=offset + limit if more else None,
        )

    @api.get("/jobs/{job}", response_model=JobState, summary="One job's state")
    @needs(Role.INVOKER)
    async def get_job(request: Request, job: JobId) -> JobState:
        return job_state(await jobs.get(job, _caller(request)))

    @api.get(
        "/jobs/{job}/result",
        summary="A finished job's answer: the synchronous call's body and status",
        responses={
            200: {"description": "The Open Inference Protocol response"},
            409: {"description": "The job has not finished, or was cancelled"},
        },
    )
    @needs(Role.INVOKER)
    async def get_result(request: Request, job: JobId) -> Response:
        found = await jobs.get(job, _caller(request), result=True)
        if found.state == CANCELLED:
            raise Conflict(f"job {job!r} was cancelled; it has no result")
        if not found.finished or found.result is None or found.status is None:
            raise Conflict(f"job {job!r} is {found.state}; its result is not ready")
        headers: dict[str, str] = {}
        media = "application/json"
        if found.state == SUCCEEDED and found.result_header_length is not None:
            media = "application/octet-stream"
            headers["inference-header-content-length"] = str(found.result_header_length)
        return Response(found.result, found.status, headers, media)

    @api.delete("/jobs/{job}", response_model=JobState, summary="Cancel a job")
    @needs(Role.INVOKER)
    async def cancel_job(request: Request, job: JobId) -> JobState:
        return job_state(await jobs.cancel(job, _caller(request)))
