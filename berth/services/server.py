"""The gRPC edge: one place where requests get their namespace and lease, and where Berth's
errors become status codes (through :func:`berth.errdefs.to_grpc_code`)."""

from __future__ import annotations

import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from berth import errdefs, leases, namespaces

log = logging.getLogger("berth.grpc")

MAX_MESSAGE = 16 << 20
# grpcio's server runs each call on a thread of its pool, for the whole call: an events
# subscription (every `ctr events`, every client watching exits) and a task's Wait hold one as
# long as they last. The pool is therefore large (its threads are made only as calls need them);
# were it full, every other call would queue behind those streams.
WORKERS = 1024


def _bind(context: grpc.ServicerContext) -> tuple[str | None, str | None]:
    ns = lease = None
    for key, value in context.invocation_metadata():
        if key == namespaces.GRPC_HEADER:
            ns = value if isinstance(value, str) else value.decode()
        elif key == leases.GRPC_HEADER:
            lease = value if isinstance(value, str) else value.decode()
    return ns, lease


def _fail(context: grpc.ServicerContext, method: str, err: BaseException) -> None:
    if isinstance(err, NotImplementedError):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by berthd")
    code = errdefs.to_grpc_code(err)
    if code == grpc.StatusCode.UNKNOWN:
        log.exception("rpc %s failed unexpectedly", method, exc_info=err)
    else:
        log.debug("rpc %s: %s: %s", method, code.name, err)
    context.abort(code, str(err))


class _Context:
    """Runs a call with the request's namespace and lease bound."""

    def __init__(self, ns: str | None, lease: str | None) -> None:
        self.ns = ns
        self.lease = lease

    def run(self, fn: Callable[[], Any]) -> Any:
        with leases.use(self.lease):
            if self.ns is None:
                return fn()
            with namespaces.use(self.ns):
                return fn()


# (method, status code name, seconds) after each call: the daemon's request metrics.
Observer = Callable[[str, str, float], None]


class Edge:
    """Wraps a servicer so each method runs bound to its request and maps errors."""

    def __init__(self, servicer: object, service: str, observe: Observer | None = None) -> None:
        self._servicer = servicer
        self._service = service
        self._observe = observe

    def __getattr__(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        method = getattr(self._servicer, name)
        full = f"{self._service}/{name}"

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.monotonic()
            ns, lease = _bind(context)
            scope = _Context(ns, lease)
            try:
                result = scope.run(lambda: method(request, context))
            except grpc.RpcError:
                raise  # context.abort() already decided the status
            except Exception as err:
                self._record(full, errdefs.code_of(err).name, start)
                _fail(context, full, err)
                raise  # unreachable: abort raises
            if inspect.isgenerator(result):
                return _stream(result, scope, context, full)
            self._record(full, "OK", start)
            log.debug("rpc %s ns=%s %.1fms", full, ns, (time.monotonic() - start) * 1e3)
            return result

        return call

    def _record(self, method: str, code: str, start: float) -> None:
        if self._observe is not None:
            self._observe(method, code, time.monotonic() - start)


def _stream(gen: Iterator[Any], scope: _Context, context: grpc.ServicerContext,
            full: str) -> Iterator[Any]:
    while True:
        try:
            item = scope.run(lambda: next(gen, _END))
        except grpc.RpcError:
            raise
        except Exception as err:
            _fail(context, full, err)
            raise
        if item is _END:
            return
        yield item


_END = object()


def new_server(workers: int = WORKERS) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )


def stream_updates(work: Callable[[Callable[[Any], None]], Any],
                   poll: float = 0.5) -> Iterator[Any]:
    """Run ``work(report)`` in a thread bound to the caller's namespace and lease, yielding what
    it reports as it goes and then its result. Its exception is raised here."""
    updates: queue.Queue[tuple[str, Any]] = queue.Queue()
    ctx = contextvars.copy_context()

    def run() -> None:
        try:
            result = ctx.run(work, lambda item: updates.put(("update", item)))
        except BaseException as err:
            updates.put(("error", err))
        else:
            updates.put(("result", result))

    thread = threading.Thread(target=run, name="rpc-work", daemon=True)
    thread.start()
    while True:
        try:
            kind, item = updates.get(timeout=poll)
        except queue.Empty:
            continue
        if kind == "error":
            raise item
        yield item
        if kind == "result":
            return
