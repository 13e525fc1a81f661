"""Layer (de)compression, digesting, and a read-ahead thread, as readable streams.

The readers here compose: ``DigestingReader(PrefetchReader(decompressed_reader(blob, c)))``
decompresses in a background thread while the caller hashes and writes files. isal, zstd and
hashlib release the GIL while they work, so on a machine with two cores this overlaps
decompression with extraction (measured: see ``bench/unpack_micro.py``). Hashing on the
caller's side balances the two threads: with the hash in the read-ahead thread, a layer of
large files waited on that thread (1.2 s against 0.7 s for 526 MB on a fresh ext4), and a
layer of small files, bound by creating them, is no slower either way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import queue
import threading
from types import ModuleType
from typing import Any, BinaryIO, cast

from berth import errdefs
from berth.diff.diff import LayerSink, Readable

GZIP = "gzip"
ZSTD = "zstd"
UNCOMPRESSED = ""

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
# Read-ahead: 1 MiB per layer being unpacked, enough to keep decompression ahead of the
# writer (bench/unpack_micro.py); 8 chunks of 1 MiB cost berthd ~25 MiB of peak RSS in a pull
# of three layers at once for no measurable speed.
PREFETCH_CHUNK = 256 << 10
PREFETCH_DEPTH = 4


# The codecs load with the first layer that needs one (1 MiB of an idle daemon).
@functools.cache
def _isal() -> tuple[ModuleType, ModuleType]:
    from isal import igzip, isal_zlib
    return igzip, isal_zlib


@functools.cache
def _zstd() -> ModuleType:
    import zstandard
    return zstandard


def _decompression_errors(kind: str) -> tuple[type[Exception], ...]:
    if kind == GZIP:
        igzip, isal_zlib = _isal()
        return cast(tuple[type[Exception], ...], (igzip.BadGzipFile, EOFError, isal_zlib.error))
    return cast(tuple[type[Exception], ...], (_zstd().ZstdError, EOFError))


def detect_compression(head: bytes) -> str:
    """``'gzip'``, ``'zstd'`` or ``''`` from a stream's first bytes (four suffice)."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD
    return UNCOMPRESSED


class _Source(io.RawIOBase):
    """A :class:`Readable` as a raw stream (the decompressors want ``readinto``), with bytes
    already peeked put back in front."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        super().__init__()
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            head = self._head
            if 0 <= size < len(head):
                self._head = head[size:]
                return head[:size]
            self._head = b""
            return head
        return self._stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _Decompressing:
    """Turns a decompressor's complaints into ``InvalidArgument``; host I/O errors pass."""

    def __init__(self, inner: Any, kind: str) -> None:
        self._inner = inner
        self._kind = kind
        self._errors = _decompression_errors(kind)

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._inner.read(size)
        except self._errors as exc:
            raise errdefs.InvalidArgument(f"layer is not valid {self._kind}: {exc}") from exc
        return data

    def close(self) -> None:
        self._inner.close()


def decompressed_reader(stream: Readable, compression: str) -> Readable:
    """The uncompressed bytes of ``stream``.

    ``compression`` is what the media type declares (``'gzip'``, ``'zstd'`` or ``''``); any
    other value raises ``NotImplementedByBerth``. As in containerd's ``DecompressStream``, the
    stream's magic bytes decide: a layer declared uncompressed that is really gzip or zstd is
    decompressed. gzip may have several members and zstd several frames. Closing the result
    does not close ``stream``.
    """
    if compression not in (GZIP, ZSTD, UNCOMPRESSED):
        raise errdefs.NotImplementedByBerth(f"unsupported layer compression {compression!r}")
    head = b""
    while len(head) < 4:
        more = stream.read(4 - len(head))
        if not more:
            break
        head += more
    source = _Source(head, stream)
    kind = detect_compression(head)
    if kind == GZIP:
        igzip, _ = _isal()
        gzip_reader = igzip.IGzipFile(fileobj=source, mode="rb")
        return _Decompressing(gzip_reader, kind)
    if kind == ZSTD:
        reader = _zstd().ZstdDecompressor().stream_reader(
            cast(BinaryIO, source), read_size=_CHUNK, read_across_frames=True, closefd=False)
        return _Decompressing(reader, kind)
    return source


class DigestingReader:
    """Passes reads through, hashing them: ``digest`` (``sha256:<hex>``) and ``size`` cover
    every byte returned so far."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class PrefetchReader:
    """Reads ``stream`` ahead in a background thread, up to ``depth`` chunks of ``chunk_size``.

    ``read`` hands out the thread's chunks (whole when ``size`` allows: no copy). An error in
    the thread is raised by the ``read`` that reaches it. :meth:`close` must be called (or the
    object used as a context manager): it stops the thread and waits for it, so ``stream`` is
    no longer in use when it returns.
    """

    def __init__(self, stream: Readable, *, chunk_size: int = PREFETCH_CHUNK,
                 depth: int = PREFETCH_DEPTH) -> None:
        self._stream = stream
        self._chunk_size = chunk_size
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._current = b""
        self._offset = 0
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="berth-layer-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._stream.read(self._chunk_size)
                self._queue.put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._queue.put(exc)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            parts = []
            while part := self.read(_CHUNK):
                parts.append(part)
            return b"".join(parts)
        if self._offset >= len(self._current):
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._current, self._offset = item, 0
        start = self._offset
        if start == 0 and size >= len(self._current):
            self._offset = len(self._current)
            return self._current
        self._offset = min(start + size, len(self._current))
        return self._current[start:self._offset]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            # Make room, so that a blocked put returns and the thread sees the stop.
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def __enter__(self) -> PrefetchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CompressingWriter:
    """A :class:`LayerSink` that compresses into another sink, digesting both sides.

    ``diff_id``/``uncompressed_size`` describe the bytes written to it; ``digest``/``size`` the
    bytes that reached ``out``. Call :meth:`close` to flush the compressor (it does not close
    ``out``). gzip output has no name and a zero time, so equal input gives equal output.
    """

    def __init__(self, out: LayerSink, compression: str, *, level: int | None = None) -> None:
        self._out = out
        self._raw_hash = hashlib.sha256()
        self._hash = hashlib.sha256()
        self.uncompressed_size = 0
        self.size = 0
        self._closed = False
        self._compressor: Any
        if compression == GZIP:
            _, isal_zlib = _isal()
            self._compressor = isal_zlib.compressobj(
                isal_zlib.ISAL_DEFAULT_COMPRESSION if level is None else level,
                isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
        elif compression == ZSTD:
            self._compressor = _zstd().ZstdCompressor(level=3 if level is None else level) \
                .compressobj()
        elif compression == UNCOMPRESSED:
            self._compressor = None
        else:
            raise errdefs.NotImplementedByBerth(f"unsupported layer compression {compression!r}")

    def write(self, data: bytes, /) -> int:
        if self._closed:
            raise ValueError("write to a closed CompressingWriter")
        self._raw_hash.update(data)
        self.uncompressed_size += len(data)
        self._emit(self._compressor.compress(data) if self._compressor else data)
        return len(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._compressor is not None:
                self._emit(self._compressor.flush())

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self.size += len(data)
        while data:
            data = data[self._out.write(data):]  # a raw sink may take part of it

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._raw_hash.hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
