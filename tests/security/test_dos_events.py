"""Denial of service through events: a subscriber that stops reading, an event that is huge.

Every subscriber has a queue in berthd. It was bounded at 1024 events only, and any client may
publish an event of up to gRPC's 16 MiB: a ``ctr events`` left with its output unread made
berthd keep up to 16 GiB for it. Now the queue is bounded in bytes too
(``exchange.QUEUE_BYTES``); past either bound newer events are dropped for that subscriber and
logged, as before (the subscriber is told nothing, publishers are never slowed). One event may
be at most ``exchange.MAX_EVENT_SIZE`` (4 MiB, ttrpc's limit for what a shim can forward);
a larger one is refused with ``ResourceExhausted``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon import Berthd

from berth import errdefs, namespaces
from berth.api.events import namespace_pb2
from berth.client import Client
from berth.events import exchange
from berth.events.exchange import Envelope, Exchange

MiB = 1 << 20
CTR = "/usr/bin/ctr"


def envelope(size: int, topic: str = "/dos/big") -> Envelope:
    return Envelope(timestamp=1, namespace="default", topic=topic, type_url="test.Blob",
                    value=bytes(size))


def drain(sub: exchange.Subscription) -> list[Envelope]:
    out = []
    while (env := sub.get(timeout=0)) is not None:
        out.append(env)
    return out


# -- the exchange ------------------------------------------------------------------------------


def test_a_slow_subscriber_is_bounded_in_bytes(caplog: pytest.LogCaptureFixture) -> None:
    """64 events of 1 MiB to a subscriber that reads nothing: it keeps QUEUE_BYTES' worth, the
    rest is dropped and logged (before: all 64 MiB were kept, up to 1024 events)."""
    ex = Exchange()
    slow = ex.subscribe()
    with caplog.at_level(logging.WARNING, logger=exchange.__name__):
        for _ in range(64):
            ex.forward(envelope(MiB))
    kept = drain(slow)
    assert sum(len(e.value) for e in kept) <= exchange.QUEUE_BYTES
    assert len(kept) == exchange.QUEUE_BYTES // (MiB + 32)  # each counted with its strings
    assert slow.dropped == 64 - len(kept)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # the first drop, then every thousandth
    assert "event subscriber too slow" in warnings[0]
    assert f"limits {exchange.QUEUE_EVENTS} events, {exchange.QUEUE_BYTES} bytes" in warnings[0]


def test_reading_makes_room_again() -> None:
    ex = Exchange()
    sub = ex.subscribe()
    for _ in range(40):
        ex.forward(envelope(MiB))
    assert len(drain(sub)) == 15
    assert sub.pending_bytes == 0
    ex.forward(envelope(MiB))
    assert len(drain(sub)) == 1


def test_the_count_bound_still_holds() -> None:
    ex = Exchange()
    sub = ex.subscribe()
    for _ in range(exchange.QUEUE_EVENTS + 10):
        ex.forward(envelope(10))
    assert len(drain(sub)) == exchange.QUEUE_EVENTS
    assert sub.dropped == 10


def test_other_subscribers_do_not_pay_for_a_slow_one() -> None:
    ex = Exchange()
    slow = ex.subscribe()
    fast = ex.subscribe()
    got = 0
    for _ in range(64):
        ex.forward(envelope(MiB))
        got += len(drain(fast))
    assert got == 64 and fast.dropped == 0
    assert slow.dropped > 0


def test_get_waits_for_an_event() -> None:
    ex = Exchange()
    sub = ex.subscribe()
    timer = threading.Timer(0.1, ex.forward, args=(envelope(1),))
    timer.start()
    try:
        started = time.monotonic()
        env = sub.get(timeout=10)
        assert env is not None and time.monotonic() - started < 5
    finally:
        timer.cancel()
    assert sub.get(timeout=0.05) is None


def test_an_oversized_event_is_refused() -> None:
    ex = Exchange()
    sub = ex.subscribe()
    ex.forward(envelope(exchange.MAX_EVENT_SIZE))  # the limit itself is fine
    with pytest.raises(errdefs.ResourceExhausted,
                       match=rf"event test.Blob on /dos/big is {exchange.MAX_EVENT_SIZE + 1} "
                             rf"bytes, over the limit of {exchange.MAX_EVENT_SIZE} bytes"):
        ex.forward(envelope(exchange.MAX_EVENT_SIZE + 1))
    with namespaces.use("default"), pytest.raises(errdefs.ResourceExhausted):
        ex.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="x" * (5 * MiB)))
    assert [len(e.value) for e in drain(sub)] == [exchange.MAX_EVENT_SIZE]


# -- through the real ctr and gRPC against a real berthd --------------------------------------


def publish(client: Client, topic: str, name: str) -> None:
    """Publish a NamespaceCreate event named ``name`` (a type ctr decodes and prints)."""
    event = namespace_pb2.NamespaceCreate(name=name)
    client.events.publish(topic, "containerd.events.NamespaceCreate", event.SerializeToString())


@pytest.mark.needs_root
def test_publishing_an_oversized_event_is_refused(berthd: Berthd) -> None:
    client = Client(berthd.address)
    try:
        publish(client, "/dos/small", "fine")
        with pytest.raises(errdefs.ResourceExhausted, match="over the limit of 4194304 bytes"):
            publish(client, "/dos/huge", "x" * (5 * MiB))
    finally:
        client.close()


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.needs_root
def test_an_unread_ctr_events_costs_berthd_at_most_its_byte_bound(berthd: Berthd) -> None:
    """``ctr events`` with its output never read stops reading its stream; 160 events of 1 MiB
    are published meanwhile. berthd drops what passes the subscriber's byte bound and says so,
    its peak memory grows by well under the 160 MiB (before: it kept them all), and it goes on
    serving another subscriber."""
    assert berthd.proc is not None
    client = Client(berthd.address)
    # It blocks writing the first event (1 MiB of JSON) to a pipe nobody reads.
    stuck = subprocess.Popen([CTR, "--address", berthd.address, "events"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # subscribed
        publish(client, "/dos/warmup", "w" * MiB)
        time.sleep(0.5)
        before = vm_hwm(berthd.proc.pid)
        for i in range(160):
            publish(client, "/dos/flood", f"{i:04d}" + "x" * MiB)
        grown = vm_hwm(berthd.proc.pid) - before

        assert "event subscriber too slow" in berthd.log_path.read_text(errors="replace")
        assert grown < 64 * MiB, f"berthd's peak memory grew by {grown >> 20} MiB"
        # Still serving: a new subscriber gets a new event.
        events = client.events.subscribe(['topic=="/dos/after"'])
        got: list[object] = []

        def read_one() -> None:
            try:
                got.append(next(iter(events)).topic)
            except Exception as exc:  # shown by the assertion below
                got.append(exc)

        reader = threading.Thread(target=read_one, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            publish(client, "/dos/after", "after")
            reader.join(0.2)
        assert got == ["/dos/after"]
        events.close()
    finally:
        stuck.kill()
        stuck.wait()
        client.close()
