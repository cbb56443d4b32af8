"""A lean HTTP/1.1 client for load generation: keep-alive connections over asyncio streams,
about a tenth of httpx's CPU per request.

On a small machine the load generator shares the cores with the server it measures, and an
open loop at hundreds of requests a second through httpx takes a core of its own (measured in
``benchmarks/results/repository.json``: ``client_cpu_pct``), which the server then lacks. This
client does only what a load test needs: ``POST`` and ``GET`` with a body of known length, a
response with ``Content-Length`` or chunked encoding, a pool of keep-alive connections per
host bounded by ``max_connections``, and a timeout per request. Its failures are httpx's
exception types, so a recorder counts them the same way. Plain ``http://`` only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class RawClient:
    """``async with RawClient(timeout=30, max_connections=64) as client: await client.post(...)``"""

    def __init__(self, timeout: float = 30.0, max_connections: int = 100) -> None:
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Stream]] = {}

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for _, writer in streams:
                writer.close()
        self._idle.clear()

    async def get(self, url: str, headers: dict[str, str] | None = None) -> RawResponse:
        return await self.request("GET", url, b"", headers or {})

    async def post(
        self, url: str, content: bytes = b"", headers: dict[str, str] | None = None
    ) -> RawResponse:
        return await self.request("POST", url, content, headers or {})

    async def request(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> RawResponse:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"only http:// URLs, got {url!r}")
        key = (parts.hostname, parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {path} HTTP/1.1", f"host: {parts.netloc}",
                f"content-length: {len(body)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(key, request)
            except TimeoutError:
                raise httpx.ReadTimeout(f"no answer in {self.timeout} s") from None

    async def _exchange(self, key: tuple[str, int], request: bytes) -> RawResponse:
        idle = self._idle.setdefault(key, [])
        reused = bool(idle)
        if idle:
            reader, writer = idle.pop()
        else:
            try:
                reader, writer = await asyncio.open_connection(*key)
            except OSError as exc:
                raise httpx.ConnectError(str(exc)) from None
        try:
            writer.write(request)
            await writer.drain()
            response, keep = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            if reused and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                return await self._exchange(key, request)  # the server closed an idle one
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            writer.close()
            raise
        if keep:
            idle.append((reader, writer))
        else:
            writer.close()
        return response


async def _read_response(reader: asyncio.StreamReader) -> tuple[RawResponse, bool]:
    """One response; whether the connection may carry the next request."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        content = b"".join(c[:-2] for c in chunks)
    else:
        content = await reader.readexactly(int(headers.get("content-length", "0")))
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return RawResponse(int(status), headers, content), keep
