"""The residency decision: what the gateway's check writes into ``x-data-residency``."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from modelport.controlplane.keys import KeyService
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.keys import KeyStore
from modelport.errors import ConfigError
from modelport.gateway.authz import (
    NO_REGION,
    UNCHECKED_HEADER,
    Caller,
    TenantLookup,
    allowed_regions,
    authz_enabled,
    decide,
)
from modelport.gateway.authz_server import AuthzServer, KeyTenants
from modelport.gateway.envoy_config import CDS_FILE, LDS_FILE, Listen, render
from modelport.gateway.fleet import parse_fleet
from modelport.gateway.private_socket import bind_private
from tests.unit.gateway.test_gateway_envoy_config import XDS, route_for, spec, views

REGIONS = ("ae-dxb", "ae-auh", "eu-west", "us-east")
TENANTS = {"acme": ["ae"], "globex": ["eu-west", "us"], "open": []}

ANON = TenantLookup(Caller.ANONYMOUS)
UNKNOWN = TenantLookup(Caller.UNKNOWN)
DOWN = TenantLookup(Caller.UNREACHABLE)


def key(tenant: str | None) -> TenantLookup:
    return TenantLookup(Caller.KEY, tenant)


def test_no_constraint_leaves_the_request_unrestricted() -> None:
    assert decide(REGIONS, TENANTS, None, ANON) is None
    assert decide(REGIONS, TENANTS, None, key(None)) is None
    # A tenant the fleet file does not name, or names with no residency, is not restricted.
    assert decide(REGIONS, TENANTS, None, key("initech")) is None
    assert decide(REGIONS, TENANTS, None, key("open")) is None


def test_tenant_residency_lists_the_regions_it_allows() -> None:
    assert decide(REGIONS, TENANTS, None, key("acme")) == "ae-dxb,ae-auh"
    assert decide(REGIONS, TENANTS, None, key("globex")) == "eu-west,us-east"


def test_the_client_header_only_narrows_the_tenant() -> None:
    assert decide(REGIONS, TENANTS, "ae-auh", key("acme")) == "ae-auh"
    assert decide(REGIONS, TENANTS, " ae-auh , eu-west", key("acme")) == "ae-auh"
    # Widening is impossible: the tenant forbids eu, so the client's eu allows nothing.
    assert decide(REGIONS, TENANTS, "eu", key("acme")) == NO_REGION


def test_the_client_header_alone_is_made_explicit() -> None:
    assert decide(REGIONS, TENANTS, "eu,ae-dxb", ANON) == "ae-dxb,eu-west"
    assert decide(REGIONS, TENANTS, "eu", key(None)) == "eu-west"


@pytest.mark.parametrize("value", ["", " , ", "ae-dxb-9", "xx", "ae-dx"])
def test_a_header_naming_no_region_allows_none(value: str) -> None:
    assert decide(REGIONS, TENANTS, value, ANON) == NO_REGION


@pytest.mark.parametrize("lookup", [UNKNOWN, DOWN])
def test_an_undeterminable_caller_stays_in_the_first_region(lookup: TenantLookup) -> None:
    assert decide(REGIONS, TENANTS, None, lookup) == "ae-dxb"
    assert decide(REGIONS, TENANTS, "ae", lookup) == "ae-dxb"
    assert decide(REGIONS, TENANTS, "eu", lookup) == NO_REGION


def test_allowed_regions_is_the_set_of_regions() -> None:
    assert allowed_regions(REGIONS, TENANTS, None, key("acme")) == frozenset({"ae-dxb", "ae-auh"})
    assert allowed_regions(REGIONS, TENANTS, "us", key("acme")) == frozenset()
    assert allowed_regions(REGIONS, TENANTS, None, ANON) is None


def test_no_region_matches_no_fleet_region() -> None:
    assert allowed_regions(REGIONS, {}, NO_REGION, ANON) == frozenset()


def test_the_check_runs_only_for_fleets_with_tenants_or_a_store() -> None:
    def fleet(**extra: object) -> bool:
        return authz_enabled(parse_fleet({"regions": ["ae-dxb"], **extra}, "f", Path("/")))

    assert not fleet()
    assert fleet(tenant_residency={"acme": ["ae"]})
    assert fleet(state_url="sqlite:////tmp/state.db")


# The check service: tokens looked up in the shared key store, answered as Envoy expects.


@pytest.fixture
def key_store(tmp_path: Path) -> Iterator[KeyService]:
    with Database.open(Database.sqlite_url(tmp_path)) as database:
        yield KeyService(KeyStore(database))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tenants_over(service: KeyService, clock: Clock | None = None) -> KeyTenants:
    return KeyTenants(lambda: service.store, clock=clock or Clock())


def test_a_key_tells_its_tenant(key_store: KeyService) -> None:
    _, acme = key_store.create(role="invoker", models=["*"], actor="t", tenant="acme")
    _, plain = key_store.create(role="invoker", models=["*"], actor="t")
    tenants = tenants_over(key_store)
    assert tenants.lookup(f"Bearer {acme}") == TenantLookup(Caller.KEY, "acme")
    assert tenants.lookup(f"bearer  {plain} ") == TenantLookup(Caller.KEY, None)
    assert tenants.lookup(None) == TenantLookup(Caller.ANONYMOUS)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mpk_0123456789ab_" + "A" * 43,  # no such key
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJ0ZW5hbnQiOiJhY21lIn0.c2ln",  # a JWT: unverifiable here
        "Basic dXNlcjpwdw==",
        "Bearer",
    ],
)
def test_a_token_no_key_vouches_for_is_unknown(key_store: KeyService, header: str) -> None:
    assert tenants_over(key_store).lookup(header) == TenantLookup(Caller.UNKNOWN)


def test_a_wrong_secret_for_a_real_key_is_unknown(key_store: KeyService) -> None:
    _, token = key_store.create(role="invoker", models=["*"], actor="t", tenant="acme")
    forged = token[:-1] + ("B" if token[-1] != "B" else "C")
    assert forged != token
    assert tenants_over(key_store).lookup(f"Bearer {forged}").caller is Caller.UNKNOWN


def test_a_revoked_key_loses_its_tenant_within_a_second(key_store: KeyService) -> None:
    key, token = key_store.create(role="invoker", models=["*"], actor="t", tenant="acme")
    clock = Clock()
    tenants = tenants_over(key_store, clock)
    assert tenants.lookup(f"Bearer {token}").tenant == "acme"
    key_store.revoke(key.id, actor="t")
    clock.now += 0.5
    assert tenants.lookup(f"Bearer {token}").tenant == "acme"
    clock.now += 0.6
    assert tenants.lookup(f"Bearer {token}") == TenantLookup(Caller.UNKNOWN)


def test_an_expired_key_is_unknown(key_store: KeyService) -> None:
    _, token = key_store.create(
        role="invoker", models=["*"], actor="t", tenant="acme", expires="1h"
    )
    later = KeyTenants(
        lambda: key_store.store, clock=Clock(), wall=lambda: datetime.now(UTC) + timedelta(hours=2)
    )
    assert later.lookup(f"Bearer {token}") == TenantLookup(Caller.UNKNOWN)


def test_an_unreachable_store_is_said_and_retried_without_logging_the_token(
    key_store: KeyService, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = key_store.create(role="invoker", models=["*"], actor="t", tenant="acme")
    opened: list[int] = []

    def open_store() -> KeyStore:
        opened.append(1)
        if len(opened) == 1:
            raise ConnectionRefusedError("store down")
        return key_store.store

    clock = Clock()
    tenants = KeyTenants(open_store, clock=clock)
    assert tenants.lookup(f"Bearer {token}") == TenantLookup(Caller.UNREACHABLE)
    # Left alone for a second, then asked again.
    clock.now += 0.5
    assert tenants.lookup(f"Bearer {token}") == TenantLookup(Caller.UNREACHABLE)
    assert len(opened) == 1
    clock.now += 0.6
    assert tenants.lookup(f"Bearer {token}") == TenantLookup(Caller.KEY, "acme")
    assert "cannot read API keys" in caplog.text
    assert token not in caplog.text and token.split("_")[2] not in caplog.text


class Fixed:
    """A tenant lookup with a set answer (the store has its own tests above)."""

    def __init__(self, lookup: TenantLookup | Exception) -> None:
        self.answer = lookup

    def lookup(self, header: str | None) -> TenantLookup:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def check(
    lookup: TenantLookup | Exception | None, headers: dict[str, str], method: str = "POST"
) -> httpx.Response:
    tenants = None if lookup is None else cast(KeyTenants, Fixed(lookup))
    server = AuthzServer(lambda: list(REGIONS), TENANTS, tenants)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://envoy") as client:
            return await client.request(method, "/check/v2/models/m/infer", headers=headers)

    return asyncio.run(send())


def test_the_check_always_admits_and_says_where_the_request_may_go() -> None:
    answer = check(TenantLookup(Caller.KEY, "acme"), {"x-data-residency": "ae-auh,eu"})
    assert answer.status_code == 200
    assert answer.headers["x-data-residency"] == "ae-auh"
    # Removing the mark is what tells the routes the check took place.
    assert answer.headers["x-envoy-auth-headers-to-remove"] == UNCHECKED_HEADER


def test_an_unrestricted_request_gets_no_residency() -> None:
    answer = check(TenantLookup(Caller.KEY, None), {}, method="GET")
    assert answer.status_code == 200
    assert "x-data-residency" not in answer.headers
    assert answer.headers["x-envoy-auth-headers-to-remove"] == UNCHECKED_HEADER


def test_without_a_store_a_token_keeps_the_request_in_the_first_region() -> None:
    assert check(None, {"authorization": "Bearer x"}).headers["x-data-residency"] == "ae-dxb"
    assert "x-data-residency" not in check(None, {}).headers


def test_a_failing_lookup_leaves_the_request_unchecked() -> None:
    answer = check(RuntimeError("bug"), {"authorization": "Bearer x"})
    assert answer.status_code == 200
    assert "x-envoy-auth-headers-to-remove" not in answer.headers
    assert "x-data-residency" not in answer.headers


ASK = """
import sys, httpx
client = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), timeout=5)
try:
    answer = client.get("http://authz/check/x", headers={"x-data-residency": "us"})
except httpx.TransportError as exc:
    print("no answer:", type(exc).__name__)
    sys.exit(3)
print(answer.status_code, answer.headers.get("x-data-residency"))
"""


async def ask_from_another_process(path: Path, user: int | None = None) -> tuple[int, str]:
    """What a separate local program gets from the socket: (exit status, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ASK, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, user=user,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


def private_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    return folder


def test_only_the_named_process_gets_an_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        envoy = os.getpid()  # this test process stands in for Envoy
        server = AuthzServer(lambda: list(REGIONS), TENANTS, None, lambda pid: pid == envoy)
        path = private_folder(tmp_path) / "authz.sock"
        await server.start(path)
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            transport = httpx.AsyncHTTPTransport(uds=str(path))
            async with httpx.AsyncClient(transport=transport) as client:
                answer = await client.get(
                    "http://authz/check/x", headers={"x-data-residency": "us"}
                )
            assert answer.headers["x-data-residency"] == "us-east"
            # Any other program of the same user (root here, perhaps) is cut off unanswered.
            status, output = await ask_from_another_process(path)
            assert status == 3 and output.startswith("no answer"), output
            assert server.refusals.count == 1
        finally:
            await server.stop()
        assert not path.exists()

    asyncio.run(scenario())


def connect_as(user: int, path: Path) -> int:
    """In a child running as ``user``: 0 if it could connect to ``path``, else the errno."""
    pid = os.fork()
    if pid == 0:  # the child only makes system calls, then leaves
        code = 0
        try:
            os.setgid(user)
            os.setuid(user)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_another_user_cannot_even_open_the_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = AuthzServer(lambda: list(REGIONS), TENANTS, None, lambda pid: True)
        path = private_folder(open_root) / "authz.sock"
        await server.start(path)
        try:
            assert await asyncio.to_thread(connect_as, 65534, path) == errno.EACCES
            # Even with its folder opened up afterwards, the socket's own mode refuses.
            path.parent.chmod(0o711)
            assert await asyncio.to_thread(connect_as, 65534, path) == errno.EACCES
        finally:
            await server.stop()
        assert server.refusals.count == 0  # the kernel refused: it never connected

    # A root other users can pass through, so only the gateway's own guards stand.
    open_root = Path(tempfile.mkdtemp())
    try:
        open_root.chmod(0o711)
        asyncio.run(scenario())
    finally:
        shutil.rmtree(open_root)


def test_a_socket_folder_others_can_enter_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(ConfigError, match="must be 0700"):
        bind_private(folder / "authz.sock")


# The Envoy side: every request is marked unchecked before routing, and the check unmarks it.

PATH = "/v2/models/digits/infer"


SOCKET = "/run/gw/authz.sock"


def checked_files() -> dict[str, Any]:
    fleet = spec().model_copy(update={"tenant_residency": {"acme": ["ae"]}})
    return render(fleet, views(fleet), XDS, Listen(authz_socket=SOCKET))[1]


@pytest.mark.parametrize(
    ("headers", "cluster"),
    [
        # The check answered: its explicit list picks the variant.
        ({}, "model~digits~http"),
        ({"x-data-residency": "ae-dxb,ae-auh"}, "model~digits~http~in~ae-auh+ae-dxb"),
        ({"x-data-residency": NO_REGION}, "none~http"),
        # The check did not answer: the first region, within the client's own header.
        ({UNCHECKED_HEADER: "1"}, "model~digits~http~in~ae-dxb"),
        ({UNCHECKED_HEADER: "1", "x-data-residency": "ae"}, "model~digits~http~in~ae-dxb"),
        ({UNCHECKED_HEADER: "1", "x-data-residency": "eu-west"}, "none~http"),
    ],
)
def test_routes_follow_the_check_or_its_absence(headers: dict[str, str], cluster: str) -> None:
    route = route_for(checked_files(), PATH, headers)
    assert route["route"]["cluster"] == cluster
    if cluster != "model~digits~http":
        assert "typed_per_filter_config" in route  # its no-healthy reply is the 503 JSON


def test_the_listener_marks_early_then_checks_then_routes() -> None:
    files = checked_files()
    for listener in files[LDS_FILE]["resources"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        early = manager["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
        assert early[0]["append"]["header"]["key"] == UNCHECKED_HEADER
        names = [f["name"] for f in manager["http_filters"]]
        assert names[-2:] == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
        authz = manager["http_filters"][-2]["typed_config"]
        assert authz["failure_mode_allow"] and authz["clear_route_cache"]
        assert authz["http_service"]["server_uri"]["cluster"] == "modelport~authz"
    clusters = {c["name"]: c for c in files[CDS_FILE]["resources"]}
    address = clusters["modelport~authz"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    # Envoy reaches the check over its Unix socket: no TCP port for others to ask.
    assert address["endpoint"]["address"] == {"pipe": {"path": SOCKET}}


def test_no_check_no_filter() -> None:
    fleet = spec()
    files = render(fleet, views(fleet), XDS, Listen())[1]
    manager = files[LDS_FILE]["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "early_header_mutation_extensions" not in manager
    assert "envoy.filters.http.ext_authz" not in [f["name"] for f in manager["http_filters"]]
    # Without a check there is no mark to route on: a client's own mark changes nothing.
    assert route_for(files, PATH, {UNCHECKED_HEADER: "1"})["route"]["cluster"] == (
        "model~digits~http"
    )
