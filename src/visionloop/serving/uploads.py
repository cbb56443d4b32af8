"""Request bodies read with bounded memory.

A body is refused with 413 the moment it passes its limit, before the rest of it arrives, so a
1 GB upload costs the server one chunk of memory, not a gigabyte. Multipart bodies are parsed as
they stream in (``python-multipart``'s push parser): each file part stops at the per-image
limit, the number of file parts at ``max_files``, the whole body at ``max_request_bytes``, and
the form fields we do not use at a few KiB. Starlette's ``request.form()`` bounds only the
non-file parts and spools file parts whole before anyone can look at their size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from visionloop.serving.state import ApiError, ClientGone

# Form fields that are not files are ignored by every route; they may not cost much either.
MAX_FIELDS = 16
MAX_FIELD_BYTES = 16 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one request body (from :class:`~visionloop.settings.ServeSettings`)."""

    max_request_bytes: int  # the whole body
    max_part_bytes: int  # one file (one image)
    max_files: int


@dataclass
class FilePart:
    """One file from a multipart body."""

    filename: str
    data: bytes


def too_large(message: str) -> ApiError:
    """413, and the connection closes after it: the rest of the body is never read (without
    ``Connection: close`` the server would drain it to reuse the connection: a 1 GB upload
    would still cost its gigabyte of reading)."""
    return ApiError(413, message, {"Connection": "close"}, "ImageTooLarge")


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(f"body too large: {declared} bytes exceeds the limit of {limit} bytes")


async def _stream(
    request: Request, limit: int, within_s: float | None, sink: Callable[[bytes], object]
) -> None:
    """Feed the body's chunks to ``sink``: 413 past ``limit`` bytes, 408 if the whole body has
    not come within ``within_s``.

    ``within_s`` is what is left of the request's deadline: a body that arrives later could only
    be refused, so a slow sender is cut off then instead of holding the connection open. One
    timer for the whole body, not one per chunk: a sender trickling a byte at a time costs a
    wake-up per byte and nothing more.
    """
    _check_declared(request, limit)
    if within_s is not None and within_s <= 0:
        raise ApiError(
            504, "deadline passed before the body was read", error_type="DeadlineExceeded"
        )
    size = 0
    try:
        async with asyncio.timeout(None if within_s is None else max(within_s, 0.0)):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(f"body too large: more than {limit} bytes")
                sink(chunk)
    except ClientDisconnect:  # the sender went away mid-body: nobody to answer
        raise ClientGone() from None
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within its deadline ({within_s:.3g} s)",
            {"Connection": "close"},
            "RequestTimeout",
        ) from None


async def read_body(request: Request, limit: int, within_s: float | None = None) -> bytes:
    """The whole body: 413 as soon as it passes ``limit`` bytes, 408 past ``within_s``."""
    chunks: list[bytes] = []
    await _stream(request, limit, within_s, chunks.append)
    return b"".join(chunks)


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    filename: str | None = None
    limit: int = MAX_FIELD_BYTES
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks that keep file parts and enforce the limits as bytes arrive."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.files: list[FilePart] = []
        self.fields = 0
        self.part = _Part()
        self.ended = False

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        part = self.part
        part.headers.append((bytes(part.header_field).lower(), bytes(part.header_value)))
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished(self) -> None:
        part = self.part
        disposition = dict(part.headers).get(b"content-disposition")
        if disposition is None:
            raise ApiError(400, "multipart part has no Content-Disposition header")
        _, options = parse_options_header(disposition)
        filename = options.get(b"filename")
        if filename is None:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise ApiError(400, f"too many form fields: more than {MAX_FIELDS}")
            return
        part.filename = filename.decode("utf-8", "replace")
        part.limit = self.limits.max_part_bytes
        if len(self.files) >= self.limits.max_files:
            raise too_large(f"too many files: more than {self.limits.max_files}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if len(part.data) + (end - start) > part.limit:
            what = f"file {part.filename!r}" if part.filename is not None else "form field"
            raise too_large(f"{what} too large: more than {part.limit} bytes")
        part.data += data[start:end]

    def on_part_end(self) -> None:
        part = self.part
        if part.filename is not None:
            self.files.append(FilePart(part.filename, bytes(part.data)))
        self.part = _Part()

    def on_end(self) -> None:
        self.ended = True


async def read_multipart(
    request: Request, limits: UploadLimits, within_s: float | None = None
) -> list[FilePart]:
    """The file parts of a ``multipart/form-data`` body, each refused the moment it is too big.

    Raises:
        ApiError: 413 past a limit (the rest of the body is not read), 408 past ``within_s``,
            400 for a malformed body or one without file parts.
    """
    _, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary in its Content-Type")
    collector = _Collector(limits)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
            "on_end",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        await _stream(request, limits.max_request_bytes, within_s, parser.write)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    if not collector.ended:
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary")
    if not collector.files:
        raise ApiError(400, "multipart body has no file parts")
    return collector.files
