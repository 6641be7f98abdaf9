"""Receiving a clip: stream the request body to a temp file, never holding it in memory.

Two encodings are accepted: `multipart/form-data` with the clip in the field `file`
(python-multipart's streaming parser, fed chunk by chunk), or the raw clip as the body
with a media content type. Either way the gateway counts bytes as they arrive and stops
at the first byte past the limit (413), checks the leading bytes against known media
signatures before FFmpeg ever sees the file (415), and deletes the file when the request
ends, whatever happened (the `finally` of `spooled_upload`).

A part's headers are accepted up to `PART_HEADER_MAX_BYTES` per header line (a filename of
several KB is fine: it is not needed to classify, only its extension is kept) and
`PART_HEADERS_MAX` lines; beyond either, `431 part_header_too_large`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

UPLOAD_FIELD = "file"
TEMP_PREFIX = "avserve-upload-"
# One part header line (name + value), e.g. Content-Disposition with its filename: 16 KiB
# holds a PATH_MAX path percent-encoded (python-multipart's own default is 4 KiB + 128).
PART_HEADER_MAX_BYTES = 16 * 1024
PART_HEADERS_MAX = 8  # header lines in one part (real clients send two or three)
# Room for multipart boundaries, part headers and small form fields around the clip.
MULTIPART_OVERHEAD_BYTES = 256 * 1024
SNIFF_BYTES = 512
RAW_MEDIA_TYPES = {
    "application/octet-stream",
    "application/ogg",
    "application/mp4",
    "application/x-matroska",
    "application/mxf",
}
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class Upload:
    path: Path
    size: int
    filename: str | None
    content_type: str | None
    seconds: float  # from the first read of the body to its last byte
    sha256: bytes | None = None  # of the clip's bytes, when asked for (the response cache's key)


# ---- media sniffing ----------------------------------------------------------------------


def looks_like_media(head: bytes) -> bool:
    """Do the leading bytes match a container or elementary stream FFmpeg reads as audio/video?

    Deliberately an allow-list: images, documents, archives and text are refused before
    FFmpeg's format probing (which guesses generously) ever runs on them.
    """
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid"):
        return True  # ISO BMFF / QuickTime: mp4, m4a, mov, 3gp
    if head.startswith((b"\x1a\x45\xdf\xa3", b"OggS", b"fLaC", b"ID3", b"FLV\x01", b".RMF", b"#!AMR", b"caff")):
        return True  # Matroska/WebM, Ogg, FLAC, MP3 with ID3v2, FLV, RealMedia, AMR, CAF
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI ", b"RMP3"):
        return True
    if head.startswith(b"RF64") or head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return True
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return True  # ASF: wmv, wma
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return True  # MPEG program stream, MPEG-1/2 video
    if head.startswith(b"wvpk") or head.startswith(b"MAC "):
        return True  # WavPack, Monkey's Audio
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return True  # MPEG audio frame sync (mp3 without tags) or ADTS AAC
    if head.startswith(b"\x0b\x77"):
        return True  # AC-3
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return True  # MPEG transport stream: sync byte every 188 bytes
    return False


# ---- spooling ------------------------------------------------------------------------------


class _Spool:
    """The temp file one upload is written to, with the byte count and the sniff check."""

    def __init__(self, directory: Path | None, max_bytes: int, suffix: str, digest: bool = False) -> None:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""
        self.sniffed = False
        # Hashed as it arrives, so the digest is ready with the last byte (about 0.75 ms per MB).
        self.hasher = hashlib.sha256() if digest else None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise ApiError(
                413, "file_too_large", f"the upload exceeds the limit of {self.max_bytes} bytes"
            )
        if not self.sniffed:
            self.head += data[: SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                self.sniff()
        # A page-cache write of one network chunk takes microseconds: not worth a thread hop.
        self.file.write(data)
        if self.hasher is not None:
            self.hasher.update(data)

    def sniff(self) -> None:
        self.sniffed = True
        if self.head and not looks_like_media(self.head):
            raise ApiError(415, "unsupported_media_type", "the upload is not an audio or video file")

    def finish(self) -> None:
        if not self.sniffed:
            self.sniff()
        self.file.close()
        if self.size == 0:
            raise ApiError(422, "empty_file", "the uploaded file is empty")

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _suffix(filename: str | None) -> str:
    """Keep a plausible extension: FFmpeg's probing uses it for raw formats (.aac, .ts)."""
    suffix = Path(filename or "").suffix
    return suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""


@asynccontextmanager
async def spooled_upload(
    request: Request, *, max_bytes: int, directory: Path | None, digest: bool = False
) -> AsyncIterator[Upload]:
    """Spool the request body's clip to a temp file; the file is deleted when the block exits.
    With `digest`, the clip's SHA-256 is computed on the way (`Upload.sha256`)."""
    media_type, options = parse_options_header(request.headers.get("content-type"))
    media_type_text = media_type.decode("latin-1").lower()
    multipart = media_type_text == "multipart/form-data"
    if not (multipart or _is_raw_media_type(media_type_text)):
        raise ApiError(
            415,
            "unsupported_content_type",
            f"send the clip as multipart/form-data (field {UPLOAD_FIELD!r}) or as a raw body with an audio/* "
            f"or video/* content type, not {media_type_text or 'no content type'!r}",
        )
    body_limit = max_bytes + (MULTIPART_OVERHEAD_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        # Refused before reading a byte; uvicorn discards the unread body itself.
        raise ApiError(413, "file_too_large", f"the upload ({declared} bytes) exceeds the limit of {max_bytes} bytes")

    began = time.perf_counter()
    receiver = _MultipartReceiver(options, max_bytes, directory, digest) if multipart else None
    spool: _Spool | None = None
    try:
        if receiver is None:
            filename = request.headers.get("x-filename")
            spool = _Spool(directory, max_bytes, _suffix(filename), digest)
            async for chunk in request.stream():
                spool.write(chunk)
            content_type = media_type_text or None
        else:
            body_bytes = 0
            async for chunk in request.stream():
                body_bytes += len(chunk)
                if body_bytes > body_limit:
                    raise ApiError(413, "file_too_large", f"the upload exceeds the limit of {max_bytes} bytes")
                receiver.feed(chunk)
            receiver.finish()
            spool, filename, content_type = receiver.spool, receiver.filename, receiver.content_type
        assert spool is not None
        spool.finish()
        sha256 = spool.hasher.digest() if spool.hasher is not None else None
        upload = Upload(spool.path, spool.size, filename, content_type, time.perf_counter() - began, sha256)
        yield upload
    except ClientDisconnect:
        # Nobody is left to answer; 499 (nginx's "client closed request") keeps the logs honest.
        raise ApiError(499, "client_disconnected", "the client closed the connection during the upload") from None
    finally:
        spool = spool or (receiver.spool if receiver is not None else None)
        if spool is not None:
            spool.discard()


def _is_raw_media_type(media_type: str) -> bool:
    return media_type.startswith(("audio/", "video/")) or media_type in RAW_MEDIA_TYPES or media_type == ""


class _MultipartReceiver:
    """Feeds python-multipart's streaming parser; writes only the first `file` part to disk."""

    def __init__(self, options: dict[bytes, bytes], max_bytes: int, directory: Path | None, digest: bool = False) -> None:
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(422, "invalid_multipart", "multipart/form-data without a boundary")
        self.max_bytes = max_bytes
        self.directory = directory
        self.digest = digest
        self.spool: _Spool | None = None
        self.filename: str | None = None
        self.content_type: str | None = None
        self._receiving = False  # the current part is the clip
        self._done = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        callbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(
                boundary, callbacks, max_header_size=PART_HEADER_MAX_BYTES, max_header_count=PART_HEADERS_MAX
            )
        except (MultipartParseError, ValueError) as error:
            raise ApiError(422, "invalid_multipart", f"bad multipart boundary: {error}") from None

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise _multipart_error(error) from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as error:
            raise _multipart_error(error) from None
        if self.spool is None:
            raise ApiError(422, "missing_file", f"the multipart body has no field {UPLOAD_FIELD!r} with the clip")
        if not self._done:
            raise ApiError(422, "invalid_multipart", "the multipart body ended inside the clip")

    # ---- parser callbacks ------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name != UPLOAD_FIELD or self.spool is not None:
            self._receiving = False  # other fields (and repeated `file` parts) are skipped unread
            return
        filename = disposition.get(b"filename")
        self.filename = filename.decode("utf-8", "replace") if filename is not None else None
        part_type = self._headers.get(b"content-type")
        self.content_type = part_type.decode("latin-1") if part_type else None
        self.spool = _Spool(self.directory, self.max_bytes, _suffix(self.filename), self.digest)
        self._receiving = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._receiving and self.spool is not None:
            self.spool.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._receiving:
            self._done = True
        self._receiving = False

    def _on_end(self) -> None:
        pass


def _multipart_error(error: MultipartParseError) -> ApiError:
    """python-multipart's bounds (PART_HEADER_MAX_BYTES, PART_HEADERS_MAX) are 431s: the body is
    well-formed, a part's headers are just too large; anything else is a malformed body."""
    text = str(error)
    if text.startswith("Maximum header size"):
        return ApiError(431, "part_header_too_large", f"a multipart part header is longer than {PART_HEADER_MAX_BYTES} bytes")
    if text.startswith("Maximum header count"):
        return ApiError(431, "part_header_too_large", f"a multipart part has more than {PART_HEADERS_MAX} headers")
    return ApiError(422, "invalid_multipart", f"malformed multipart body: {text}")
