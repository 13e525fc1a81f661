"""berth.crilog: the CRI log line format as containerd 1.6's CRI writes it, the ``crilog://``
URI, and the log file that follows a rotation.

The formatter is checked on scripted bytes (no I/O), against the rules containerd's
``pkg/cri/io/logger.go`` follows, and against :func:`containerd_records`, a model of how that
code reads a stream (``bufio.Reader.ReadSlice`` over a buffer of ``bufSize`` bytes, a ``\\r``
that ends a full buffer given back, pieces gathered until a line ends or passes the maximum),
on many random streams in random chunkings. Timestamps are parsed out before content is
compared; they are checked on their own.
"""

from __future__ import annotations

import os
import random
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import crilog, errdefs

Record = tuple[str, str, bytes]  # (stream, tag, content)

RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([FP]) (.*)$", re.DOTALL)
RFC3339NANO = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?(Z|[+-]\d\d:\d\d)$")
NOW = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def records(out: bytes) -> list[Record]:
    """The records of formatted output, timestamps checked for their shape and dropped."""
    assert out == b"" or out.endswith(b"\n"), out
    found = []
    for line in out.split(b"\n")[:-1]:
        match = RECORD.match(line)
        assert match, line
        assert RFC3339NANO.match(match[1]), match[1]
        found.append((match[2].decode(), match[3].decode(), match[4]))
    return found


def fmt(data: bytes | list[bytes], max_line_size: int = crilog.DEFAULT_MAX_LINE_SIZE,
        stream: str = "stdout", eof: bool = True) -> list[Record]:
    formatter = crilog.Formatter(stream, max_line_size)
    chunks = [data] if isinstance(data, bytes) else data
    out = b"".join(formatter.feed(chunk, NOW) for chunk in chunks)
    if eof:
        out += formatter.close(NOW)
    return records(out)


def F(content: bytes, stream: str = "stdout") -> Record:
    return (stream, "F", content)


def P(content: bytes, stream: str = "stdout") -> Record:
    return (stream, "P", content)


# -- a model of containerd's reader --------------------------------------------------------------


def containerd_records(data: bytes, max_len: int, buf_size: int = 4096) -> list[Record]:
    """What containerd's redirectLogs makes of a whole stream ``data`` on stdout (see the
    module). bufio never uses a buffer under 16 bytes; containerd shrinks it to ``max_len``."""
    if 0 < max_len < buf_size:
        buf_size = max_len
    buf_size = max(buf_size, 16)
    out: list[Record] = []
    pieces: list[bytes] = []
    length = 0
    pos = 0
    while True:
        # ReadSlice('\n') on the buffered reader, then containerd's readLine.
        window = data[pos:pos + buf_size]
        newline = window.find(b"\n")
        more, eof = False, False
        if newline >= 0:
            piece = window[:newline + 1]
            pos += newline + 1
            piece = piece[:-2] if piece.endswith(b"\r\n") else piece[:-1]
        elif len(window) == buf_size:  # the buffer is full: a prefix of a longer line
            piece, more = window, True
            pos += buf_size
            if piece.endswith(b"\r"):  # give back a \r that a \n may follow
                piece, pos = piece[:-1], pos - 1
        else:
            piece, eof = window, True
            pos += len(window)
        if piece:
            pieces.append(piece)
            length += len(piece)
        if eof and length == 0:
            return out
        if max_len > 0 and length > max_len:
            joined = b"".join(pieces)
            out.append(P(joined[:max_len]))
            pieces, length = [joined[max_len:]], length - max_len
        if more:
            continue
        out.append(P(b"".join(pieces)) if eof else F(b"".join(pieces)))
        pieces, length = [], 0
        if eof:
            return out


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.choice([1, 1, 2, 3, 7, 16, 50, 1000])
        chunks.append(data[i:i + n])
        i += n
    return chunks


@pytest.mark.parametrize("max_len", [16, 17, 23, 40, 0, -1])
def test_matches_containerd_on_random_streams(max_len: int) -> None:
    """Random streams of a, b, \\r and \\n, fed in random chunks, give containerd's records
    (with each of its buffer sizes: the maximum itself, and a smaller one)."""
    rng = random.Random(max_len)
    for _ in range(400):
        length = rng.choice([0, 1, 5, 16, 17, 33, 80, 200])
        data = bytes(rng.choice(b"aab\r\n\n") for _ in range(length))
        if rng.random() < 0.3:
            data += rng.choice([b"\n", b"\r", b"\r\n", b"\r\r"])
        got = fmt(random_chunks(rng, data), max_len)
        for buf_size in (16, max(16, max_len)):
            assert got == containerd_records(data, max_len, buf_size), (data, buf_size)


# -- the rules, one by one ---------------------------------------------------------------------


def test_full_lines_on_both_streams() -> None:
    assert fmt(b"out 1\nout 2\n") == [F(b"out 1"), F(b"out 2")]
    assert fmt(b"err 1\nerr 2\n", stream="stderr") == [F(b"err 1", "stderr"),
                                                      F(b"err 2", "stderr")]


def test_exact_bytes_of_a_record() -> None:
    formatter = crilog.Formatter("stderr")
    assert formatter.feed(b"hello world\n\n", NOW) == (
        b"2023-11-14T22:13:20.123456789Z stderr F hello world\n"
        b"2023-11-14T22:13:20.123456789Z stderr F \n")


def test_empty_lines_are_empty_full_records() -> None:
    assert fmt(b"\n\na\n\n") == [F(b""), F(b""), F(b"a"), F(b"")]
    assert fmt(b"\r\n") == [F(b"")]


def test_eof_without_newline_is_partial() -> None:
    assert fmt(b"line\npartial") == [F(b"line"), P(b"partial")]
    assert fmt([b"par", b"tial"]) == [P(b"partial")]
    assert fmt(b"line\n") == [F(b"line")]
    assert fmt(b"") == []


def test_held_line_waits_for_its_end() -> None:
    formatter = crilog.Formatter("stdout")
    assert formatter.feed(b"no newline yet", NOW) == b""
    assert formatter.pending == 14
    assert records(formatter.feed(b" ... now\nnext", NOW)) == [F(b"no newline yet ... now")]
    assert records(formatter.close(NOW)) == [P(b"next")]
    assert formatter.close(NOW) == b""
    with pytest.raises(errdefs.FailedPrecondition):
        formatter.feed(b"more\n", NOW)


def test_carriage_returns() -> None:
    """\\r\\n ends a line as \\n does; any other \\r is content, also at EOF."""
    assert fmt(b"dos\r\n") == [F(b"dos")]
    assert fmt(b"a\rb\n") == [F(b"a\rb")]
    assert fmt(b"two\r\r\n") == [F(b"two\r")]
    assert fmt(b"cr at eof\r") == [P(b"cr at eof\r")]
    assert fmt([b"split\r", b"\n"]) == [F(b"split")]
    assert fmt([b"split\r", b"x\n"]) == [F(b"split\rx")]
    assert fmt(b"\r") == [P(b"\r")]


def test_line_exactly_at_the_maximum_is_full() -> None:
    assert fmt(b"a" * 8 + b"\n", 8) == [F(b"a" * 8)]
    assert fmt([b"a" * 4, b"a" * 4, b"\n"], 8) == [F(b"a" * 8)]
    assert fmt(b"a" * 8 + b"\r\n", 8) == [F(b"a" * 8)]  # the \r does not count
    assert fmt(b"a" * 16 + b"\n", 8) == [P(b"a" * 8), F(b"a" * 8)]


def test_lines_over_the_maximum_split_into_partials() -> None:
    assert fmt(b"a" * 9 + b"\n", 8) == [P(b"a" * 8), F(b"a")]
    assert fmt(b"0123456789abcdefg\nshort\n", 8) == [P(b"01234567"), P(b"89abcdef"), F(b"g"),
                                                    F(b"short")]
    assert fmt(b"a" * 8 + b"\rb\n", 8) == [P(b"a" * 8), F(b"\rb")]
    # at EOF, every piece is partial
    assert fmt(b"a" * 9, 8) == [P(b"a" * 8), P(b"a")]
    assert fmt(b"a" * 8 + b"\r", 8) == [P(b"a" * 8), P(b"\r")]


def test_partials_go_out_before_the_line_ends() -> None:
    """A line past the maximum is written as it grows; a \\r at the end is held, since a
    \\n may follow."""
    formatter = crilog.Formatter("stdout", 4)
    assert records(formatter.feed(b"abcd", NOW)) == []
    assert records(formatter.feed(b"e", NOW)) == [P(b"abcd")]
    assert records(formatter.feed(b"fgh\r", NOW)) == []
    assert records(formatter.feed(b"\n", NOW)) == [F(b"efgh")]
    assert formatter.pending == 0


def test_default_maximum_is_containerds() -> None:
    assert crilog.DEFAULT_MAX_LINE_SIZE == 16384
    line = b"x" * 40000
    assert fmt(line + b"\n") == [P(line[:16384]), P(line[16384:32768]), F(line[32768:])]


@pytest.mark.parametrize("limit", [-1, 0])
def test_no_maximum(limit: int) -> None:
    line = b"y" * 100_000
    assert crilog.Formatter("stdout", limit).max_line_size == crilog.UNLIMITED
    assert fmt([line[:50_000], line[50_000:], b"\n"], limit) == [F(line)]
    assert fmt(line, limit) == [P(line)]


def test_unknown_stream() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="stdout or stderr"):
        crilog.Formatter("stdin")


def test_many_small_writes_stay_linear() -> None:
    """A long line written a byte at a time is held without re-joining it per byte."""
    formatter = crilog.Formatter("stdout", crilog.UNLIMITED)
    started = time.process_time()
    for _ in range(200_000):
        formatter.feed(b"z", NOW)
    assert records(formatter.feed(b"\n", NOW)) == [F(b"z" * 200_000)]
    assert time.process_time() - started < 10  # quadratic joining would take minutes


# -- timestamps --------------------------------------------------------------------------------


@pytest.fixture
def local_zone() -> Iterator[None]:
    saved = os.environ.get("TZ")
    yield
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


def set_zone(tz: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()


def test_timestamp_trims_trailing_zeros(local_zone: None) -> None:
    set_zone("UTC0")
    base = 1_700_000_000 * 10**9
    assert crilog.timestamp(base + 123_456_789) == b"2023-11-14T22:13:20.123456789Z"
    assert crilog.timestamp(base + 120_000_000) == b"2023-11-14T22:13:20.12Z"
    assert crilog.timestamp(base + 1) == b"2023-11-14T22:13:20.000000001Z"
    assert crilog.timestamp(base + 100) == b"2023-11-14T22:13:20.0000001Z"
    assert crilog.timestamp(base) == b"2023-11-14T22:13:20Z"
    assert crilog.timestamp(0) == b"1970-01-01T00:00:00Z"


def test_timestamp_in_a_local_zone(local_zone: None) -> None:
    """Local time, with the zone's offset; Z whenever the offset is 0, whatever the zone's
    name (Go's Z07:00)."""
    base = 1_700_000_000 * 10**9
    set_zone("IST-05:30")  # POSIX signs are reversed: UTC+05:30
    assert crilog.timestamp(base + 500_000_000) == b"2023-11-15T03:43:20.5+05:30"
    set_zone("NST+03:30")
    assert crilog.timestamp(base + 500_000_000) == b"2023-11-14T18:43:20.5-03:30"
    set_zone("GMT0")
    assert crilog.timestamp(base) == b"2023-11-14T22:13:20Z"
    # a zone with summer time: the offset of the instant's own date
    set_zone("CET-1CEST,M3.5.0,M10.5.0/3")
    assert crilog.timestamp(base) == b"2023-11-14T23:13:20+01:00"
    assert crilog.timestamp(1_690_000_000 * 10**9) == b"2023-07-22T06:26:40+02:00"


def test_records_carry_the_feed_time(local_zone: None) -> None:
    set_zone("UTC0")
    formatter = crilog.Formatter("stdout", 4)
    out = formatter.feed(b"ab\nabcdef", 5 * 10**9 + 10) + formatter.close(6 * 10**9)
    assert out == (b"1970-01-01T00:00:05.00000001Z stdout F ab\n"
                   b"1970-01-01T00:00:05.00000001Z stdout P abcd\n"
                   b"1970-01-01T00:00:06Z stdout P ef\n")


def test_default_time_is_now(local_zone: None) -> None:
    set_zone("UTC0")
    before = time.time()
    out = crilog.Formatter("stdout").feed(b"x\n")
    stamp = out.split(b" ")[0].decode()
    seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= seconds <= time.time() + 1


# -- the URI -----------------------------------------------------------------------------------


def test_uri_round_trip() -> None:
    uri = crilog.format_uri("/var/log/pods/ns_pod_uid/c/0.log", 1000)
    assert uri == "crilog:///var/log/pods/ns_pod_uid/c/0.log?max_line_size=1000"
    assert crilog.parse_uri(uri) == crilog.LogTarget("/var/log/pods/ns_pod_uid/c/0.log", 1000)
    odd = "/var/log/a b/%x?#y.log"
    assert crilog.parse_uri(crilog.format_uri(odd, -1)) == crilog.LogTarget(odd, -1)


def test_uri_defaults() -> None:
    assert crilog.parse_uri("crilog:///tmp/x.log") == crilog.LogTarget("/tmp/x.log", 16384)
    assert crilog.parse_uri("crilog:///tmp/x.log?max_line_size=-1").max_line_size == -1
    assert crilog.parse_uri("crilog:///tmp/x.log?max_line_size=0").max_line_size == 0


@pytest.mark.parametrize(("uri", "message"), [
    ("file:///tmp/x.log", "not a CRI log URI"),
    ("/tmp/x.log", "not a CRI log URI"),
    ("crilog:/tmp/x.log", "not a CRI log URI"),
    ("crilog://tmp/x.log", "names a host"),
    ("crilog://", "must be absolute"),
    ("crilog:///", "must name a file"),
    ("crilog:///var/log/", "must name a file"),
    ("crilog:///var/log/../x.log", "'..'"),
    ("crilog:///var/./x.log", "'.'"),
    ("crilog:///x%00y", "NUL"),
    ("crilog:///x\ny", "control characters"),
    ("crilog:///x.log#frag", "fragment"),
    ("crilog:///x.log?max_line_size=abc", "must be an integer"),
    ("crilog:///x.log?max_line_size=", "must be an integer"),
    ("crilog:///x.log?max_line_size=1&max_line_size=2", "given twice"),
    ("crilog:///x.log?size=1", "unknown parameter"),
    ("crilog:///x.log?junk", "invalid CRI log URI"),
    ("crilog:///x%ff.log", "invalid CRI log URI"),
])
def test_uri_errors(uri: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=re.escape(message)):
        crilog.parse_uri(uri)


def test_format_uri_wants_an_absolute_path() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="absolute"):
        crilog.format_uri("relative/x.log")
    with pytest.raises(errdefs.InvalidArgument, match=re.escape("'..'")):
        crilog.format_uri("/a/../x.log")


# -- the file ----------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def test_log_file_is_created_as_containerds(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "pods" / "ns_pod_uid" / "c" / "0.log"
    log = crilog.LogFile(str(path))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
        log.write(b"one\n")
    finally:
        log.close()
    assert log.closed
    log.close()  # idempotent
    with pytest.raises(errdefs.FailedPrecondition):
        log.write(b"late\n")
    log = crilog.LogFile(str(path))  # appends
    log.write(b"two\n")
    log.close()
    assert path.read_bytes() == b"one\ntwo\n"


def test_log_file_open_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
        crilog.LogFile(str(tmp_path / "file" / "0.log"))
    with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
        crilog.LogFile(str(tmp_path))


def test_log_file_follows_a_rename(tmp_path: Path) -> None:
    """The kubelet's rotation: rename the file away; the next write goes to a new file at the
    path, without a reopen call."""
    path = tmp_path / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"before\n")
        path.rename(tmp_path / "0.log.20260101-000000")
        log.write(b"after\n")
        log.write(b"later\n")
    finally:
        log.close()
    assert (tmp_path / "0.log.20260101-000000").read_bytes() == b"before\n"
    assert path.read_bytes() == b"after\nlater\n"


def test_log_file_follows_a_removal_and_a_replacement(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"one\n")
        path.unlink()
        log.write(b"two\n")
        assert path.read_bytes() == b"two\n"
        path.unlink()
        path.write_bytes(b"someone else's\n")
        log.write(b"three\n")
    finally:
        log.close()
    assert path.read_bytes() == b"someone else's\nthree\n"


def test_log_file_explicit_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d" / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"one\n")
        path.rename(tmp_path / "old.log")
        (tmp_path / "d").rmdir()
        log.reopen()  # as containerd's ReopenContainerLog: the directory made again too
        assert path.read_bytes() == b""
        log.write(b"two\n")
    finally:
        log.close()
    assert (tmp_path / "old.log").read_bytes() == b"one\n"
    assert path.read_bytes() == b"two\n"
    with pytest.raises(errdefs.FailedPrecondition):
        log.reopen()


def test_log_file_keeps_writing_when_the_path_cannot_be_reopened(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory removed (with its pod): the records go on to the file already open, and
    the failure is logged once, not per write."""
    path = tmp_path / "d" / "0.log"
    log = crilog.LogFile(str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        log.write(b"one\n")
        path.unlink()
        (tmp_path / "d").rmdir()
        log.write(b"two\n")
        log.write(b"three\n")
        assert os.read(fd, 100) == b"one\ntwo\nthree\n"
    finally:
        os.close(fd)
        log.close()
    assert not (tmp_path / "d").exists()
    errors = [r for r in caplog.records if "writing on to the file" in r.getMessage()]
    assert len(errors) == 1


# The log directory is writable by log agents (a pod with /var/log mounted): what they plant
# there must never turn root's appends into writes elsewhere.


def test_log_file_never_follows_a_planted_symlink(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The log renamed away and a symlink to a host file put in its place: the records go on
    to the file already open, the target is untouched, and the refusal is logged once."""
    victim = tmp_path / "ld.so.preload"
    victim.write_bytes(b"")
    logs = tmp_path / "logs"
    path = logs / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"one\n")
        path.rename(logs / "0.log.old")
        path.symlink_to(victim)
        log.write(b"/tmp/evil.so\n")
        log.write(b"two\n")
        with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
            log.reopen()  # ReopenContainerLog does not follow it either
        log.write(b"three\n")
    finally:
        log.close()
    assert victim.read_bytes() == b""
    assert (logs / "0.log.old").read_bytes() == b"one\n/tmp/evil.so\ntwo\nthree\n"
    errors = [r for r in caplog.records if "writing on to the file" in r.getMessage()]
    assert len(errors) == 1
    with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
        crilog.LogFile(str(path))  # nor does a first open
    assert victim.read_bytes() == b""


def test_log_file_never_follows_a_swapped_directory(tmp_path: Path) -> None:
    """The container's log directory renamed away and replaced by a symlink to a host
    directory: a log file made anew (after a removal) goes in the directory opened at start,
    ReopenContainerLog is refused (the old file stays in use), and nothing is ever created in
    the symlink's target. Nor is a hard link to another file, planted at the log's name,
    written to."""
    host_dir = tmp_path / "etc"
    host_dir.mkdir()
    logs = tmp_path / "pod" / "c"
    path = logs / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"one\n")
        path.unlink()
        logs.rename(tmp_path / "pod" / "moved")
        logs.symlink_to(host_dir)
        log.write(b"two\n")
        with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
            log.reopen()
        log.write(b"three\n")
    finally:
        log.close()
    assert list(host_dir.iterdir()) == []
    assert (tmp_path / "pod" / "moved" / "0.log").read_bytes() == b"two\nthree\n"
    other = tmp_path / "shadow"
    other.write_bytes(b"secret\n")
    (tmp_path / "real").mkdir()
    os.link(other, tmp_path / "real" / "0.log")
    with pytest.raises(errdefs.BerthError, match="other names"):
        crilog.LogFile(str(tmp_path / "real" / "0.log"))
    assert other.read_bytes() == b"secret\n"


def test_log_file_writes_to_regular_files_only(tmp_path: Path) -> None:
    """A FIFO planted at the log's name is neither waited on (no reader) nor written to (with
    one); nor is a file already open for reading."""
    path = tmp_path / "0.log"
    log = crilog.LogFile(str(path))
    try:
        log.write(b"one\n")
        path.rename(tmp_path / "0.log.old")
        os.mkfifo(path)
        log.write(b"two\n")  # ENXIO: no reader; must not block
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            log.write(b"three\n")
            assert os.read(reader, 100) == b""
        finally:
            os.close(reader)
    finally:
        log.close()
    assert (tmp_path / "0.log.old").read_bytes() == b"one\ntwo\nthree\n"
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
        crilog.LogFile(str(path))


def test_log_file_writes_from_threads_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    log = crilog.LogFile(str(path))

    def writer(stream: str) -> None:
        formatter = crilog.Formatter(stream)
        for i in range(300):
            log.write(formatter.feed(f"{stream} {i} ".encode() * 50 + b"\n"))

    threads = [threading.Thread(target=writer, args=(s,)) for s in ("stdout", "stderr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    got = records(path.read_bytes())
    for stream in ("stdout", "stderr"):
        assert [r[2] for r in got if r[0] == stream] == [
            f"{stream} {i} ".encode() * 50 for i in range(300)]


def test_attach_tee(tmp_path: Path) -> None:
    """The raw output reaches the attach FIFO only while a reader holds it; a full FIFO drops
    (never blocks) and a reader that left is let go until the next one comes."""
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    tee = crilog.AttachTee(str(fifo))
    tee.write(b"nobody listens\n")  # ENXIO: no reader, nothing kept
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        tee.write(b"hello\n")
        assert os.read(reader, 100) == b"hello\n"
        big = b"x" * (1 << 20)
        tee.write(big)  # more than a pipe holds: the rest is dropped, no blocking
        assert tee.dropped > 0
        while True:
            try:
                if not os.read(reader, 1 << 16):
                    break
            except BlockingIOError:
                break
    finally:
        os.close(reader)
    tee.write(b"after the reader left\n")  # EPIPE: closed quietly
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        tee.write(b"again\n")
        assert os.read(reader, 100) == b"again\n"
    finally:
        os.close(reader)
        tee.close()


def test_uri_with_attach_dir() -> None:
    uri = crilog.format_uri("/var/log/pods/a/c/0.log", 100, "/run/berth/io/x")
    assert crilog.parse_uri(uri) == crilog.LogTarget("/var/log/pods/a/c/0.log", 100,
                                                     "/run/berth/io/x")
    with pytest.raises(errdefs.InvalidArgument):
        crilog.parse_uri("crilog:///a.log?attach=relative")
