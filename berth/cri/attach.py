"""A running container's live output, fanned out to attach sessions, and its stdin.

Where the output comes from depends on who writes the log:

* Berth's shim writes the log itself and tees the raw output into a FIFO per stream in the
  container's attach directory while someone reads it (:class:`berth.crilog.AttachTee`).
  :class:`Output` opens those FIFOs when the first session subscribes and closes them when the
  last one leaves, so an unattached container costs nothing.
* For another runtime berthd copies the output from FIFOs into the log
  (:class:`berth.cri.logs.LogCopier`); its output hook calls :meth:`Output.publish`.

A session's queue is bounded: a session that does not keep up loses output (the log keeps it
all), and never slows the container or the other sessions. At the end of a stream (the
container's output closed) every session gets ``(stream, b"")``.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

SESSION_CHUNKS = 1024  # chunks (at most 64 KiB each) a session may have waiting
_CHUNK = 1 << 16


class Session:
    """One attach session's view of the output: :meth:`get` returns ``(stream, data)``;
    ``data`` empty at a stream's end. :meth:`on_chunk` names a function the publishing thread
    calls after each chunk it queues, so that a reader can wait without a thread."""

    def __init__(self, output: Output) -> None:
        self._output = output
        self.chunks: queue.Queue[tuple[str, bytes]] = queue.Queue(SESSION_CHUNKS)
        self.dropped = 0
        self._notify: Callable[[], None] | None = None

    def get(self) -> tuple[str, bytes] | None:
        """The next chunk waiting, or None (it does not wait: see :meth:`on_chunk`)."""
        try:
            return self.chunks.get_nowait()
        except queue.Empty:
            return None

    def on_chunk(self, notify: Callable[[], None] | None) -> None:
        self._notify = notify

    def _queued(self) -> None:
        notify = self._notify
        if notify is not None:
            notify()

    def close(self) -> None:
        self._output.unsubscribe(self)


class Output:
    """The fan-out of one container's output (see the module)."""

    def __init__(self, fifos: dict[str, str] | None = None) -> None:
        """``fifos``: stream name -> attach FIFO path (Berth's shim); None when the output
        is published by a copier instead."""
        self._fifos = fifos or {}
        self._lock = threading.Lock()
        self._sessions: list[Session] = []
        self._readers: list[threading.Thread] = []
        self._wake: tuple[int, int] | None = None

    def subscribe(self) -> Session:
        session = Session(self)
        with self._lock:
            self._sessions.append(session)
            if self._fifos and self._wake is None:
                self._start_readers()
        return session

    def unsubscribe(self, session: Session) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)
            last = not self._sessions
            wake = self._wake if last else None
            readers = self._readers if last else []
            if last:
                self._wake, self._readers = None, []
        if wake is not None:
            os.write(wake[1], b"x")
            for thread in readers:
                thread.join()
            for fd in wake:
                os.close(fd)

    def publish(self, stream: str, data: bytes) -> None:
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            try:
                session.chunks.put_nowait((stream, data))
            except queue.Full:
                session.dropped += len(data)
            session._queued()

    def _start_readers(self) -> None:
        self._wake = os.pipe()
        for stream, path in self._fifos.items():
            thread = threading.Thread(target=self._read, args=(stream, path, self._wake[0]),
                                      name=f"cri-attach-{stream}", daemon=True)
            self._readers.append(thread)
            thread.start()

    def _read(self, stream: str, path: str, wake: int) -> None:
        """Read one attach FIFO until the last session leaves. A FIFO with no writer does not
        poll readable; when the shim's writer closes (HUP) the FIFO is opened anew, to wait
        for its next writer without spinning."""
        fd = -1
        try:
            while True:
                if fd < 0:
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    except OSError as err:
                        log.warning("cri attach: cannot open %s: %s", path, err.strerror)
                        return
                    poller = select.poll()
                    poller.register(fd, select.POLLIN)
                    poller.register(wake, select.POLLIN)
                ready = dict(poller.poll())
                if wake in ready:
                    return
                if fd not in ready:
                    continue
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    self.publish(stream, data)
                else:
                    os.close(fd)
                    fd = -1
        finally:
            if fd >= 0:
                os.close(fd)

    def end(self) -> None:
        """The container's output ended: every session sees the end of each stream."""
        for stream in self._fifos or ("stdout", "stderr"):
            self.publish(stream, b"")
