"""The lean load-test client: the same answers as httpx from a real server, keep-alive reuse,
chunked bodies, a server that closes, and failures as httpx's exception types."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.serving.fakes import solid_png
from visionloop.bench.load import Target, closed_loop, open_loop
from visionloop.bench.rawhttp import RawClient

PAYLOADS = [solid_png(m) for m in (20, 21, 22)]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_server(handler: Handler, work: Callable[[str], Awaitable[object]]) -> object:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await work(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    return await reader.readexactly(length)


def test_answers_match_httpx_on_a_real_server(serve):
    server = serve()
    url = f"{server.url}/v1/models/fake/predict"

    async def both() -> tuple[object, object]:
        async with RawClient() as raw, httpx.AsyncClient() as reference:
            a = await raw.post(url, content=PAYLOADS[0], headers={"content-type": "image/png"})
            b = await reference.post(url, content=PAYLOADS[0])
            bad = await raw.post(url, content=b"not an image")
            assert bad.status_code == 415
            assert "error" in bad.json()
            return (a.status_code, _untimed(a.json())), (b.status_code, _untimed(b.json()))

    raw, reference = asyncio.run(both())
    assert raw == reference


def _untimed(answer: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in answer.items() if k != "timing_ms"}


def test_open_and_closed_loops_run_over_the_raw_client(serve):
    server = serve(max_batch_size=4, max_delay_ms=5)
    target = Target(f"{server.url}/v1/models/fake/predict", metrics_url=f"{server.url}/metrics")
    opened = asyncio.run(open_loop(target, PAYLOADS, 40, 1.0, 1000, client_kind="raw"))
    assert opened.sent == opened.ok == opened.statuses["200"] > 0
    assert opened.mean_batch is not None  # the metrics were read through the raw client too
    closed = asyncio.run(closed_loop(target, PAYLOADS, 3, 0.5, client_kind="raw"))
    assert closed.ok > 0
    assert closed.statuses == {"200": closed.ok}


def test_a_connection_is_kept_alive_and_reused():
    peers: list[object] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def work(base: str) -> list[bytes]:
        async with RawClient(max_connections=1) as client:
            return [(await client.post(f"{base}/x", content=b"abc%d" % i)).content
                    for i in range(3)]  # fmt: skip

    assert asyncio.run(_with_server(handler, work)) == [b"abc0", b"abc1", b"abc2"]
    assert len(peers) == 1


def test_chunked_answers_and_a_server_that_closes():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def work(base: str) -> list[tuple[int, bytes]]:
        async with RawClient() as client:
            answers = []
            for _ in range(2):  # the second needs a new connection: the first was closed
                response = await client.post(f"{base}/x", content=b"{}")
                answers.append((response.status_code, response.content))
            return answers

    assert asyncio.run(_with_server(handler, work)) == [(503, b"hello world")] * 2


def test_failures_are_httpx_errors():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def post(base: str, timeout: float = 5.0) -> object:
        async with RawClient(timeout=timeout) as client:
            return await client.post(f"{base}/x", content=b"{}")

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(_with_server(silent, lambda base: post(base, timeout=0.2)))
    with pytest.raises(httpx.ReadError):
        asyncio.run(_with_server(hang_up, post))
    with pytest.raises(httpx.UnsupportedProtocol):
        asyncio.run(post("https://127.0.0.1:1"))


def test_trailers_are_read_and_a_connection_closed_while_idle_is_replaced():
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        served.append(1)
        if len(served) == 1:  # chunked, with a trailer, kept alive
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\nx-check: 1\r\n\r\n"
            )
            await writer.drain()
            await _read_request(reader)  # the second request on the same connection
            served.append(2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo")
        else:  # no length: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()  # closes without saying so: the client finds out when it reuses it

    async def work(base: str) -> list[bytes]:
        async with RawClient(max_connections=1) as client:
            first = await client.post(f"{base}/x", content=b"{}")
            second = await client.post(f"{base}/x", content=b"{}")
            await asyncio.sleep(0.1)  # the server has closed that connection meanwhile
            third = await client.post(f"{base}/x", content=b"{}")
            return [first.content, second.content, third.content]

    assert asyncio.run(_with_server(handler, work)) == [b"ok", b"two", b"until the end"]
