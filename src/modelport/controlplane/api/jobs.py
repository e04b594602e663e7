"""/api/v1/jobs: the caller's asynchronous inference jobs (docs/jobs.md).

Every route needs the invoker role, the one that submits jobs, and answers
only for the caller's own jobs: another caller's job id is a 404 like an id
that never existed, so ids reveal nothing. ``POST /jobs/batch`` submits a
batch over files under the server's ``batch_dir``; a job's callback URL
comes from the ``X-Callback-Url`` header (or, for a batch, the body).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Header, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import Request

from modelport.controlplane.callbacks import CALLBACK_HEADER
from modelport.controlplane.jobs import JobDetails, JobRunner
from modelport.controlplane.store.jobs import CANCELLED, SUCCEEDED, StoredJob
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.errors import Conflict, InvalidRequest
from modelport.types import Identity, Role

JobId = Annotated[str, Path(min_length=1, max_length=64, description="Job id")]
JOBS_PATH = "/api/v1/jobs/"
#: Longest Idempotency-Key accepted, as on the infer route; visible ASCII only.
IDEMPOTENCY_KEY_MAX = 128


def idempotency_key(raw: str | None) -> str | None:
    """The ``Idempotency-Key`` header, held to the infer route's rule: 1 to 128
    visible ASCII characters; InvalidRequest (400) otherwise, before anything is stored."""
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not all("!" <= c <= "~" for c in key):
        raise InvalidRequest(
            f"Idempotency-Key {raw[:40]!r} is malformed: it must be 1 to "
            f"{IDEMPOTENCY_KEY_MAX} visible ASCII characters without spaces"
        )
    return key


class CallbackStatus(BaseModel):
    """Where the job's callback delivery stands."""

    url: str
    state: str = Field(description="pending, delivered or abandoned")
    attempts: int
    last_error: str | None


class RowFailure(BaseModel):
    row: int = Field(description="The input row's number (1-based; the line for JSONL)")
    error: str


class BatchProgress(BaseModel):
    """A batch job's files and progress: rows done, succeeded and failed so far."""

    input: str
    output: str
    rows: int = Field(description="Input rows done (written to the output)")
    succeeded: int
    failed: int
    failures: list[RowFailure] = Field(description="The first 100 failed rows")


class BatchSubmission(BaseModel):
    """A batch over files under the server's batch_dir (names relative to it)."""

    model: str = Field(min_length=1, max_length=256)
    version: str | None = Field(default=None, min_length=1, max_length=32)
    input: str = Field(min_length=1, max_length=1024, description="A .jsonl or .csv file")
    output: str = Field(
        min_length=1, max_length=1024, description="A .jsonl or .csv file, not existing yet"
    )
    id_column: str | None = Field(default=None, min_length=1, max_length=256)
    chunk_rows: int = Field(default=256, ge=1, le=10_000)
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048)


class Accepted(BaseModel):
    id: str
    state: str
    location: str


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
    callback: CallbackStatus | None = Field(
        default=None, description="The callback's delivery (one job's read only)"
    )
    batch: BatchProgress | None = Field(
        default=None, description="A batch job's progress (one job's read only)"
    )


class JobList(BaseModel):
    jobs: list[JobState]
    next_offset: int | None = Field(description="The offset of the next page; null on the last")


def job_state(job: StoredJob, details: JobDetails | None = None) -> JobState:
    callback = batch = None
    if details is not None and details.callback is not None:
        c = details.callback
        callback = CallbackStatus(
            url=c.url, state=c.state, attempts=c.attempts, last_error=c.last_error
        )
    if details is not None and details.batch is not None:
        b = details.batch
        batch = BatchProgress(
            input=b.input,
            output=b.output,
            rows=b.rows,
            succeeded=b.succeeded,
            failed=b.failed,
            failures=[RowFailure(row=r, error=e) for r, e in b.failures],
        )
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
        callback=callback,
        batch=batch,
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
        found = await jobs.get(job, _caller(request))
        return job_state(found, await jobs.details(found))

    @api.post(
        "/jobs/batch",
        response_model=Accepted,
        status_code=202,
        summary="Run a model over a file under the server's batch_dir",
        responses={
            400: {"description": "A name outside batch_dir, a bad file or callback host"},
            409: {"description": "The output file exists"},
        },
    )
    @needs(Role.INVOKER)
    async def submit_batch(
        request: Request,
        body: BatchSubmission,
        callback: Annotated[str | None, Header(alias=CALLBACK_HEADER)] = None,
        key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        if callback is not None and body.callback_url is not None:
            raise InvalidRequest(f"give the callback URL in {CALLBACK_HEADER} or the body")
        once = idempotency_key(key)
        job = await jobs.submit_batch(
            identity=_caller(request),
            model=body.model,
            version=body.version,
            input=body.input,
            output=body.output,
            id_column=body.id_column,
            chunk_rows=body.chunk_rows,
            callback_url=callback if callback is not None else body.callback_url,
            idempotency_key=once,
        )
        location = JOBS_PATH + job.id
        answer = Accepted(id=job.id, state=job.state, location=location)
        return JSONResponse(answer.model_dump(), 202, {"location": location})

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
