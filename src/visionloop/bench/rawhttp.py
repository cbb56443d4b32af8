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
        try:
            async with asyncio.timeout(self.timeout):  # waiting for a connection slot too
                async with self._slots:
                    return await self._exchange(key, request, method == "HEAD")
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer in {self.timeout} s") from None

    async def _exchange(self, key: tuple[str, int], request: bytes, head: bool) -> RawResponse:
        idle = self._idle.setdefault(key, [])
        while idle and idle[-1][0].at_eof():  # the server closed it while it was idle
            idle.pop()[1].close()
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
            response, keep = await _read_response(reader, head)
        except (TimeoutError, asyncio.CancelledError):
            writer.close()
            raise
        except Exception as exc:
            writer.close()
            nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if reused and nothing_read and isinstance(exc, OSError | asyncio.IncompleteReadError):
                return await self._exchange(key, request, head)  # a stale kept-alive one
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
        if keep:
            idle.append((reader, writer))
        else:
            writer.close()
        return response


async def _read_response(
    reader: asyncio.StreamReader, head: bool = False
) -> tuple[RawResponse, bool]:
    """One response (to a HEAD request if ``head``: no body); whether the connection may
    carry the next request."""
    start = await reader.readuntil(b"\r\n\r\n")
    lines = start.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    code = int(status)
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if head or code in (204, 304) or 100 <= code < 200:
        content = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the empty line
            pass
        content = b"".join(chunks)
    elif "content-length" in headers:
        content = await reader.readexactly(int(headers["content-length"]))
    else:  # delimited by the end of the connection
        content, keep = await reader.read(), False
    return RawResponse(code, headers, content), keep
