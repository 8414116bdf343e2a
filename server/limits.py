"""Access and limits: API keys, request-body size, admission (concurrency + queue → 429) and
per-request timeouts (→ 504). Every rejection is an OpenAI-shaped error and a metric.

Keys come from `--api-key` (comma list), `--api-keys-file` (one per line, `#` comments) or the
environment variable ``EFFORT_API_KEYS`` (comma list); with none configured the API is open.
Each request's Bearer token is compared with every key by `hmac.compare_digest` (constant time,
and no early exit across keys).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from pathlib import Path

from .errors import APIError

ENV_KEYS = "EFFORT_API_KEYS"


class Unauthorized(APIError):
    status, code = 401, "invalid_api_key"


class TooLarge(APIError):
    status, code = 413, "request_too_large"


class Overloaded(APIError):
    status, type, code = 429, "rate_limit_error", "server_overloaded"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Timeout(APIError):
    status, type, code = 504, "timeout_error", "request_timeout"


def load_keys(api_key: str, keys_file: str) -> list[bytes]:
    keys = [k.strip() for k in api_key.split(",") if k.strip()]
    if keys_file:
        p = Path(keys_file)
        if not p.is_file():
            raise ValueError(f"api keys file not found: {keys_file}")
        keys += [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not keys and os.environ.get(ENV_KEYS):
        keys = [k.strip() for k in os.environ[ENV_KEYS].split(",") if k.strip()]
    return [k.encode() for k in keys]


class KeyCheck:
    def __init__(self, keys: list[bytes]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> None:
        if not self.keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
        given = token.strip().encode()
        ok = False
        for k in self.keys:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            raise Unauthorized("invalid API key")


class Admission:
    """At most `max_concurrent` requests generate at once (0: no limit); up to `max_queue` more
    wait for a slot; beyond that a request is refused at once with 429 and `Retry-After`.
    `enter()` returns a ticket; `release(ticket)` exactly once when the request is done."""

    def __init__(self, max_concurrent: int, max_queue: int, retry_after: int = 1):
        self.max_concurrent, self.max_queue, self.retry_after = max_concurrent, max_queue, retry_after
        self._sem = asyncio.Semaphore(max_concurrent) if max_concurrent > 0 else None
        self.running = 0
        self.queued = 0

    async def enter(self) -> bool:
        if self._sem is None:
            return False
        if self.running + self.queued >= self.max_concurrent + self.max_queue:
            raise Overloaded(
                f"server busy: {self.running} requests running and {self.queued} queued "
                f"(limits {self.max_concurrent} / {self.max_queue}); retry later",
                self.retry_after,
            )
        self.queued += 1
        try:
            await self._sem.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        return True

    def release(self, ticket: bool) -> None:
        if ticket:
            self.running -= 1
            self._sem.release()
