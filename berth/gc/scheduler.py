"""When to collect: a background thread that runs the metadata collector
(:class:`berth.metadata.gc.Collector`) a short while after deletions, or at once on request."""

from __future__ import annotations

import logging
import threading
import time

from berth.metadata.gc import Collector

log = logging.getLogger(__name__)


class Scheduler:
    """Runs the collector in the background a short while after things were deleted, or at once
    when a caller asks for ``sync``."""

    def __init__(self, collector: Collector, delay: float = 0.5) -> None:
        self.collector = collector
        self._delay = delay
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def trigger(self, sync: bool = False) -> None:
        if sync:
            self.collector.collect()
        else:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            time.sleep(self._delay)  # let a burst of deletions land first
            self._wake.clear()
            try:
                self.collector.collect()
            except Exception:
                log.exception("gc: collection failed; will retry on the next deletion")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
