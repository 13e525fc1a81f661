"""The ``[metrics] address`` endpoint: Prometheus text at ``/v1/metrics``.

Per-container series (gauges, as containerd exports them) come from each running task's cgroup
statistics, asked of its shim at scrape time (cgroups v1 ``io.containerd.cgroups.v1.Metrics``
or v2), labelled with the
container id and namespace, named like containerd's (``container_cpu_total_nanoseconds``,
``container_memory_usage_bytes``, ``container_pids_current``, ``container_blkio_...``).
Daemon series: gRPC requests by method and code, and the Python process collector's CPU/RSS.
A task whose shim does not answer is skipped for that scrape (and logged), never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from berth import errdefs
from berth.containers import AnyValue

log = logging.getLogger(__name__)

# (namespace, container id, stats Any) for each running task
StatsSource = Callable[[], Iterable[tuple[str, str, AnyValue]]]

V1 = "io.containerd.cgroups.v1.Metrics"
V2 = "io.containerd.cgroups.v2.Metrics"


class Families:
    """One scrape's metric families, filled container by container."""

    def __init__(self) -> None:
        labels = ["container_id", "namespace"]
        self.cpu_total = GaugeMetricFamily(
            "container_cpu_total_nanoseconds", "CPU time used by the container", labels=labels)
        self.cpu_user = GaugeMetricFamily(
            "container_cpu_user_nanoseconds", "CPU time in user mode", labels=labels)
        self.cpu_kernel = GaugeMetricFamily(
            "container_cpu_kernel_nanoseconds", "CPU time in kernel mode", labels=labels)
        self.mem_usage = GaugeMetricFamily(
            "container_memory_usage_bytes", "Memory used by the container", labels=labels)
        self.mem_limit = GaugeMetricFamily(
            "container_memory_usage_limit_bytes", "The container's memory limit",
            labels=labels)
        self.mem_rss = GaugeMetricFamily(
            "container_memory_rss_bytes", "Anonymous memory (RSS)", labels=labels)
        self.pids = GaugeMetricFamily(
            "container_pids_current", "Processes in the container", labels=labels)
        self.pids_limit = GaugeMetricFamily(
            "container_pids_limit", "The container's process limit", labels=labels)
        self.io_bytes = GaugeMetricFamily(
            "container_blkio_io_service_bytes_recursive_bytes", "Bytes read and written",
            labels=[*labels, "op", "device"])

    def all(self) -> list[Any]:
        return [self.cpu_total, self.cpu_user, self.cpu_kernel, self.mem_usage, self.mem_limit,
                self.mem_rss, self.pids, self.pids_limit, self.io_bytes]

    def add(self, namespace: str, container_id: str, stats: AnyValue) -> None:
        lv = [container_id, namespace]
        if stats.type_url.endswith(V1):
            from berth.api.cgroups.v1 import metrics_pb2 as v1

            m1 = v1.Metrics.FromString(stats.value)
            self.cpu_total.add_metric(lv, m1.cpu.usage.total)
            self.cpu_user.add_metric(lv, m1.cpu.usage.user)
            self.cpu_kernel.add_metric(lv, m1.cpu.usage.kernel)
            self.mem_usage.add_metric(lv, m1.memory.usage.usage)
            self.mem_limit.add_metric(lv, m1.memory.usage.limit)
            self.mem_rss.add_metric(lv, m1.memory.total_rss or m1.memory.rss)
            self.pids.add_metric(lv, m1.pids.current)
            self.pids_limit.add_metric(lv, m1.pids.limit)
            for e in m1.blkio.io_service_bytes_recursive:
                self.io_bytes.add_metric([*lv, e.op.lower(), f"{e.major}:{e.minor}"], e.value)
        elif stats.type_url.endswith(V2):
            from berth.api.cgroups.v2 import metrics_pb2 as v2

            m2 = v2.Metrics.FromString(stats.value)
            self.cpu_total.add_metric(lv, m2.cpu.usage_usec * 1000)
            self.cpu_user.add_metric(lv, m2.cpu.user_usec * 1000)
            self.cpu_kernel.add_metric(lv, m2.cpu.system_usec * 1000)
            self.mem_usage.add_metric(lv, m2.memory.usage)
            self.mem_limit.add_metric(lv, m2.memory.usage_limit)
            self.mem_rss.add_metric(lv, m2.memory.anon)
            self.pids.add_metric(lv, m2.pids.current)
            self.pids_limit.add_metric(lv, m2.pids.limit)
            for io in m2.io.usage:
                device = f"{io.major}:{io.minor}"
                self.io_bytes.add_metric([*lv, "read", device], io.rbytes)
                self.io_bytes.add_metric([*lv, "write", device], io.wbytes)
        else:
            log.debug("container %s/%s: unknown stats type %s", namespace, container_id,
                      stats.type_url)


class ContainerCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        families = Families()
        for namespace, container_id, stats in self._source():
            families.add(namespace, container_id, stats)
        yield from families.all()


class DaemonMetrics:
    """The registry berthd exposes, and the instruments the gRPC edge records into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter("grpc_server_handled", "gRPC requests handled",
                                ["grpc_method", "grpc_code"], registry=self.registry)
        self.latency = Histogram("grpc_server_handling_seconds", "gRPC handling time",
                                 ["grpc_method"], registry=self.registry,
                                 buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 30))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def add_containers(self, source: StatsSource) -> None:
        self.registry.register(ContainerCollector(source))


class MetricsServer:
    """Serves ``registry`` at ``http://ADDRESS/v1/metrics`` in a thread until closed."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise errdefs.InvalidArgument(
                f"metrics address {address!r} must be HOST:PORT, e.g. 127.0.0.1:1338")
        handler = MetricsHandler.factory(registry)

        class Handler(handler):  # type: ignore[valid-type,misc]
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/v1/metrics", "/metrics"):
                    self.send_error(404, "metrics are at /v1/metrics")
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
