"""Which server the management commands call, with which token, and what a refusal says.

``--url`` and ``--token`` are accepted at every level: before the command
group (``modelport --url U models list``), after it (``modelport models
--token T list``) and on the command itself (``modelport models list --url
U``). The one nearest the command wins; without any, ``MODELPORT_URL`` and
``MODELPORT_TOKEN``, then the default address and no token.

Errors name where the address or the token came from (the option, the
variable, or the default), never the token itself, and how to change it.
Exit codes: 1 when the server answered with an error (4xx, 5xx), 2 when it
could not be reached or did not answer as a modelport server does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "MODELPORT_URL"
TOKEN_ENV = "MODELPORT_TOKEN"

#: Exit code of a request the server refused (any 4xx or 5xx).
EXIT_REFUSED = 1
#: Exit code of a server that could not be reached (or of a usage error, as click's).
EXIT_UNREACHABLE = 2

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        show_default=False,
        help=f"REST address of the server that models and deploy commands call "
        f"(default: ${URL_ENV}, else {DEFAULT_URL}).",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        show_default=False,
        help=f"API key or JWT that models and deploy commands send to a server with "
        f"authentication on (default: ${TOKEN_ENV}).",
    ),
]


@dataclass
class Target:
    """The ``--url``/``--token`` given so far, outermost first; kept in the click context."""

    url: str | None = None
    token: str | None = None

    def given(self, url: str | None, token: str | None) -> None:
        """Record options given at one level; a later (nearer) level wins."""
        if url is not None:
            self.url = url
        if token is not None:
            self.token = token

    def resolve(self) -> Connection:
        """The address and token to use, and where each came from."""
        if self.url is not None:
            url, url_from = self.url, "--url"
        elif os.environ.get(URL_ENV):
            url, url_from = os.environ[URL_ENV], URL_ENV
        else:
            url, url_from = DEFAULT_URL, "the default"
        if self.token:
            token: str | None = self.token
            token_from: str | None = "--token"
        elif os.environ.get(TOKEN_ENV):
            token, token_from = os.environ[TOKEN_ENV], TOKEN_ENV
        else:
            token, token_from = None, None
        return Connection(url, url_from, token, token_from)


def remember(ctx: typer.Context, url: str | None, token: str | None) -> Target:
    """Store this level's ``--url``/``--token`` in the context shared by every level."""
    target = ctx.ensure_object(Target)
    target.given(url, token)
    return target


def connection(ctx: typer.Context, url: str | None = None, token: str | None = None) -> Connection:
    """The connection a command uses: its own options over those given before it."""
    return remember(ctx, url, token).resolve()


@dataclass(frozen=True)
class Connection:
    url: str
    url_from: str
    """``--url``, ``MODELPORT_URL`` or ``the default``."""
    token: str | None
    token_from: str | None
    """``--token``, ``MODELPORT_TOKEN``, or None when no token is sent."""

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request to ``/api/v1``; a refusal or an unreachable server ends the command."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        where = f"{self.url.rstrip('/')}/api/v1{path}"
        try:
            response = httpx.request(method, where, json=body, headers=headers, timeout=60)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            fail(self.unreachable(exc), EXIT_UNREACHABLE)
        if response.status_code >= 400:
            fail(self.refused(response), EXIT_REFUSED)
        return response

    def json(self, response: httpx.Response) -> Any:
        """The response's JSON; an answer that is not JSON is no modelport server's."""
        try:
            return response.json()
        except ValueError:
            fail(
                f"error: {self.url} answered {response.status_code} without JSON; is it a "
                f"modelport server's REST port? Change the address with --url URL or {URL_ENV}.",
                EXIT_UNREACHABLE,
            )

    def unreachable(self, exc: Exception) -> str:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            reason = f"connection refused or no route ({reason})"
        return (
            f"error: cannot reach the server at {self.url} (from {self.url_from}): {reason}\n"
            f"Is it running? Give its REST address with --url URL or {URL_ENV}=URL."
        )

    def refused(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("error"):
            message = str(payload["error"])
            if payload.get("code"):  # the management API's; the data plane's errors have none
                message += f" ({payload['code']})"
        else:
            message = response.text.strip() or response.reason_phrase
        lines = [f"error: {response.status_code}: {message}"]
        if response.status_code in (401, 403):
            lines.append(self.credentials_hint(response.status_code))
        return "\n".join(lines)

    def credentials_hint(self, status: int) -> str:
        """What was sent and how to send another token; never the token itself."""
        how = f"pass one with --token TOKEN or the {TOKEN_ENV} environment variable"
        if self.token_from is None:
            return f"No token was sent (neither --token nor {TOKEN_ENV} is set): {how}."
        if status == 401:
            return (
                f"The token from {self.token_from} was not accepted (unknown, revoked or "
                f"expired): {how}."
            )
        return (
            f"The token from {self.token_from} is not allowed this (its role or models do "
            f"not cover it): {how} for a key that is."
        )


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` to stderr and end the command with ``code``."""
    typer.echo(message, err=True)
    raise typer.Exit(code)
