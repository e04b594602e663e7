"""Every state store over one opened database, as the server builds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from modelport.controlplane.store import AuditLog, CanaryStore, Database, KeyStore, PolicyStore
from modelport.controlplane.store.database import utc_now


@dataclass(frozen=True)
class Stores:
    database: Database
    policies: PolicyStore
    canaries: CanaryStore
    keys: KeyStore
    audit: AuditLog

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> Stores:
        database = Database.open(url, clock=clock)
        return cls(
            database,
            PolicyStore(database),
            CanaryStore(database),
            KeyStore(database),
            AuditLog(database),
        )

    def __enter__(self) -> Stores:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.database.close()
