"""``berth run``, ``berth start`` and ``berth exec``: containers from images, and processes in
them, as ``ctr run`` makes them (and nerdctl's flags).

``berth run`` takes these steps, each a call to berthd:

1. the image, from the local store only (Images.Get; ``berth pull`` fetches);
2. its config and top chain ID (Content), which must be unpacked in the snapshotter
   (Snapshots.Stat);
3. under a lease: Snapshots.Prepare of the container's root filesystem (key = the container
   id, parent = the top chain ID), the OCI spec (:mod:`berth.oci.spec`: containerd's defaults,
   then the image config, then the flags; user and group names resolved in that root
   filesystem, mounted read-only for a moment; last, containerd's default seccomp profile
   (:mod:`berth.oci.seccomp`) unless ``--security-opt`` or ``--privileged`` says otherwise),
   and Containers.Create;
4. Tasks.Create with the process's stdio (:mod:`berth.cli.cio`), Tasks.Wait, Tasks.Start;
5. in the foreground: stdio copied, signals forwarded (Tasks.Kill) or the terminal's size
   (Tasks.ResizePty), and the container's exit status becomes berth's. The stopped task is kept
   (``berth ps -a`` shows it) unless ``--rm`` removes everything.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated, Any

import typer

from berth import errdefs
from berth.cli import cio, documents, rootfs
from berth.cli.containers import (
    LABEL_NAME,
    LABEL_STOP_SIGNAL,
    STATUS,
    delete_task,
    find_task,
    name_of,
    resolve,
    spec_of,
)
from berth.cli.state import find_image, state
from berth.client import Client
from berth.containers import AnyValue, Container, RuntimeInfo, pack_spec, validate_id
from berth.images.manifest import chain_ids
from berth.oci import seccomp
from berth.oci import spec as oci
from berth.runtime.runtime import IO, CreateOpts, ExecOpts, Task

DEFAULT_RUNTIME = "io.containerd.runc.v2"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
NETWORKS = ("none", "host")
# Forwarded to the container's process while berth waits for it (as ctr does, the ones a
# person or a supervisor sends to a foreground command).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
OUTPUT_GRACE = 5.0  # seconds the output may take to end after the process exited

# Options shared by run and exec.
Interactive = Annotated[bool, typer.Option(
    "--interactive", "-i", help="Keep stdin open and copy it to the process.")]
Tty = Annotated[bool, typer.Option("--tty", "-t", help="Give the process a terminal.")]
Env = Annotated[list[str] | None, typer.Option(
    "--env", "-e", metavar="KEY=VALUE", help="Set an environment variable (repeatable).")]
Workdir = Annotated[str | None, typer.Option(
    "--workdir", "-w", help="Working directory inside the container.")]
User = Annotated[str | None, typer.Option(
    "--user", "-u", metavar="USER[:GROUP]",
    help="Run as this user (name or uid, with an optional group name or gid).")]


# -- attaching to a process --------------------------------------------------------------------


@dataclass
class Attach:
    """How to connect to a process in the foreground."""

    stdin: bool  # -i: copy our stdin to the process
    tty: bool  # the process has a terminal (stdout only, no stderr)
    log_path: str = ""  # also append the output here


class _Signals:
    """Signals that arrive while berth waits, kept for the waiting loop to forward (never
    handled inside the signal handler itself); SIGWINCH flags a resize."""

    def __init__(self, forward: bool, resize: bool) -> None:
        self.pending: list[int] = []
        self.resized = threading.Event()
        self._saved: dict[int, Any] = {}
        self._wanted = list(FORWARDED) if forward else []
        if resize:
            self._wanted.append(signal.SIGWINCH)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGWINCH:
            self.resized.set()
        else:
            self.pending.append(signum)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in self._wanted:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _resize(task: Task, exec_id: str) -> None:
    for fd in (0, 1):
        size = cio.terminal_size(fd) if cio.is_terminal(fd) else None
        if size is not None:
            with contextlib.suppress(errdefs.BerthError):
                task.resize_pty(size[0], size[1], exec_id)
            return


def attached(client: Client, container_id: str, exec_id: str, attach: Attach,
             create: Callable[[cio.Fifos], None], on_failure: Callable[[], None]) -> int:
    """Create a process with FIFOs (``create`` calls Tasks.Create or Tasks.Exec with their
    paths), start it, connect our stdio to it until it exits, and return its exit status.
    ``on_failure`` undoes ``create`` when starting fails."""
    if attach.stdin and attach.tty and not cio.is_terminal(0):
        raise errdefs.InvalidArgument("the input device is not a terminal (drop -t, or -i)")
    fifos = cio.Fifos.create(exec_id or container_id, stdin=attach.stdin,
                             stderr=not attach.tty)
    task = client.tasks.task(container_id)
    pumps: list[cio.OutputPump] = []
    stdin_fd: int | None = None
    log_fd: int | None = None
    try:
        out_fd = cio.open_reader(fifos.stdout)
        err_fd = cio.open_reader(fifos.stderr) if fifos.stderr else None
        if attach.log_path:
            log_fd = cio.open_log(attach.log_path)
        pumps.append(cio.OutputPump(out_fd, cio.binary_stdout(), log_fd))
        if err_fd is not None:
            pumps.append(cio.OutputPump(err_fd, cio.binary_stderr(), log_fd))
        if fifos.stdin:
            stdin_fd = cio.open_writer(fifos.stdin)
        create(fifos)
        waiter = task.waiter(exec_id)
        raw = attach.tty and cio.is_terminal(0)
        try:
            with _Signals(forward=True, resize=attach.tty) as signals, \
                    cio.raw_terminal(0) if raw else contextlib.nullcontext():
                try:
                    if attach.tty:  # the pty exists from create on: size it before start
                        _resize(task, exec_id)
                    task.start(exec_id)
                except BaseException:
                    waiter.cancel()
                    with contextlib.suppress(errdefs.BerthError):
                        on_failure()
                    raise
                if stdin_fd is not None:
                    on_eof = None if attach.tty else (
                        lambda: task.close_io(exec_id))
                    cio.InputPump(0, stdin_fd, on_eof)
                    stdin_fd = None  # the pump owns it now
                while True:
                    try:
                        exit_status = waiter.result(0.2).status
                        break
                    except TimeoutError:
                        pass
                    while signals.pending:
                        with contextlib.suppress(errdefs.NotFound, errdefs.FailedPrecondition):
                            task.kill(signals.pending.pop(0), exec_id=exec_id)
                    if signals.resized.is_set():
                        signals.resized.clear()
                        _resize(task, exec_id)
                for pump in pumps:
                    pump.wait(OUTPUT_GRACE)
        finally:
            waiter.cancel()
        return int(exit_status)
    finally:
        for pump in pumps:
            pump.stop()
        for fd in (stdin_fd, log_fd):
            if fd is not None:
                os.close(fd)
        fifos.remove()


# -- the spec ----------------------------------------------------------------------------------


def _image_config(config_doc: dict[str, Any], entrypoint: str | None) -> dict[str, Any]:
    """The config document with ``--entrypoint`` applied: it replaces the image's Entrypoint,
    and the image's Cmd is then not used (docker's rule); ``""`` clears the entrypoint."""
    if entrypoint is None:
        return config_doc
    doc = copy.deepcopy(config_doc)
    config = doc.setdefault("config", {})
    if not isinstance(config, dict):
        raise errdefs.InvalidArgument("image config: config must be an object")
    config["Entrypoint"] = [entrypoint] if entrypoint else []
    config["Cmd"] = []
    return doc


def _user_opts(user: str, root: str | None) -> list[oci.SpecOpt]:
    who = user.split(":", 1)[0]
    opts = [oci.with_user(user, root)]
    if ":" not in user:  # an explicit group means just that group (plus nothing found)
        opts.append(oci.with_additional_gids(who, root))
    return opts


def _hostname(container_id: str) -> str:
    return container_id if len(container_id) <= 64 else container_id[:12]


def _check_binds(volumes: list[str]) -> None:
    for v in volumes:
        bind = oci.parse_bind_mount(v)
        if not os.path.exists(bind["source"]):
            raise errdefs.NotFound(f"bind mount {v!r}: the source {bind['source']} does not exist")


@contextlib.contextmanager
def _leased(client: Client) -> Iterator[None]:
    with client.lease():
        yield


def _new_id(client: Client) -> str:
    for _ in range(10):
        cid = secrets.token_hex(6)
        if not cid.isdigit():  # ids that look like numbers confuse people and flags
            try:
                client.containers.get(cid)
            except errdefs.NotFound:
                return cid
    raise errdefs.Internal("could not pick an unused container id")


# -- security options --------------------------------------------------------------------------

SECCOMP_PROFILE_LIMIT = 1 << 20  # bytes of a --security-opt seccomp=FILE profile


@dataclass
class Security:
    """What ``--security-opt`` asked for."""

    seccomp: str | dict[str, Any] = "default"  # "default", "unconfined" or a profile
    no_new_privileges: bool | None = None  # None: the default (true, unless --privileged)


def _load_seccomp_profile(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(SECCOMP_PROFILE_LIMIT + 1)
    except OSError as err:
        raise errdefs.InvalidArgument(
            f"cannot read seccomp profile {path}: {err.strerror or err}") from None
    if len(data) > SECCOMP_PROFILE_LIMIT:
        raise errdefs.InvalidArgument(
            f"seccomp profile {path} is larger than {SECCOMP_PROFILE_LIMIT} bytes")
    try:
        profile = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errdefs.InvalidArgument(f"seccomp profile {path} is not JSON: {err}") from None
    if not isinstance(profile, dict):
        raise errdefs.InvalidArgument(
            f"seccomp profile {path} must be a JSON object (an OCI linux.seccomp)")
    oci.with_seccomp(profile)  # checks it now, before anything is made
    return profile


def parse_security_opts(entries: list[str]) -> Security:
    """``--security-opt`` values, as nerdctl reads them: ``seccomp=unconfined``,
    ``seccomp=FILE`` (an OCI ``linux.seccomp`` object, read now), ``no-new-privileges`` and
    ``no-new-privileges=true|false``. Anything else is InvalidArgument."""
    security = Security()
    for entry in entries:
        key, eq, value = entry.partition("=")
        if key == "seccomp":
            if not value:
                raise errdefs.InvalidArgument(
                    "--security-opt seccomp needs a value: unconfined or a profile file")
            security.seccomp = "unconfined" if value == "unconfined" else \
                _load_seccomp_profile(value)
        elif key == "no-new-privileges":
            # the words Go's strconv.ParseBool (nerdctl's parser) takes
            if not eq or value in ("1", "t", "T", "true", "TRUE", "True"):
                security.no_new_privileges = True
            elif value in ("0", "f", "F", "false", "FALSE", "False"):
                security.no_new_privileges = False
            else:
                raise errdefs.InvalidArgument(
                    f"--security-opt {entry!r}: no-new-privileges takes true or false")
        else:
            raise errdefs.InvalidArgument(
                f"--security-opt {entry!r} is not supported: use seccomp=unconfined, "
                "seccomp=FILE or no-new-privileges[=true|false]")
    return security


def _security_opts(security: Security, privileged: bool) -> list[oci.SpecOpt]:
    """The spec options for ``--privileged`` and ``--security-opt``, to apply last.

    By default a container gets both containerd's default seccomp profile and
    ``noNewPrivileges``. Neither ctr nor nerdctl has both by default: `ctr run` sets
    noNewPrivileges (``--allow-new-privs`` clears it) but applies the profile only with
    ``--seccomp``; nerdctl applies the profile but sets noNewPrivileges only with
    ``--security-opt no-new-privileges``. Berth takes the safe default of each. As in nerdctl,
    --privileged has no seccomp filter unless a profile file is named, and allows new
    privileges unless no-new-privileges is asked for."""
    opts: list[oci.SpecOpt] = []
    if privileged:
        opts.append(oci.with_privileged(oci.current_capabilities(), oci.host_devices()))
    if security.no_new_privileges is not None:
        opts.append(oci.with_new_privileges(not security.no_new_privileges))
    # The default profile depends on the capabilities, so it comes after anything that sets
    # them (containerd's WithDefaultProfile has the same rule).
    if isinstance(security.seccomp, dict):
        opts.append(oci.with_seccomp(security.seccomp))
    elif security.seccomp == "default" and not privileged:
        opts.append(seccomp.with_default_profile())
    return opts


@dataclass
class RunOptions:
    image: str
    args: list[str]
    name: str | None
    env: list[str]
    workdir: str | None
    user: str | None
    volumes: list[str]
    entrypoint: str | None
    runtime: str
    snapshotter: str
    network: str
    tty: bool
    security_opts: list[str] = field(default_factory=list)
    privileged: bool = False


def create_container(client: Client, o: RunOptions) -> Container:
    """Steps 1 to 3 of ``berth run``: the container, its root filesystem prepared."""
    try:
        image = find_image(client, o.image)
    except errdefs.NotFound:
        raise errdefs.NotFound(
            f"image not found: {o.image}: run `berth pull {o.image}` first") from None
    docs = documents.load(client, image.target)
    chain = chain_ids(docs.config.diff_ids)
    parent = chain[-1] if chain else ""
    snapshotter = client.snapshotter(o.snapshotter)
    if parent and not snapshotter.exists(parent):
        raise errdefs.FailedPrecondition(
            f"image {image.name} is not unpacked in the {o.snapshotter} snapshotter: run "
            f"`berth --snapshotter {o.snapshotter} pull {image.name}` to unpack it")
    config_doc = _image_config(docs.config.raw, o.entrypoint)
    if o.network not in NETWORKS:
        raise errdefs.InvalidArgument(f"--network must be one of {', '.join(NETWORKS)}")
    _check_binds(o.volumes)
    security = parse_security_opts(o.security_opts)
    if o.name is not None:
        cid = validate_id(o.name)
        with contextlib.suppress(errdefs.NotFound):
            client.containers.get(cid)
            raise errdefs.AlreadyExists(
                f"the name {cid} is already in use by a container: remove it with "
                f"`berth rm {cid}`, or choose another --name")
    else:
        cid = _new_id(client)
    namespace = state.namespace
    labels = {LABEL_NAME: cid}
    inner = config_doc.get("config")
    stop_signal = inner.get("StopSignal") if isinstance(inner, dict) else None
    if isinstance(stop_signal, str) and stop_signal:
        labels[LABEL_STOP_SIGNAL] = stop_signal
    with _leased(client):
        mounts = snapshotter.prepare(cid, parent)
        try:
            with rootfs.mounted(mounts) as root:
                opts: list[oci.SpecOpt] = [
                    oci.with_image_config(config_doc, root, o.args),
                    oci.with_hostname(_hostname(cid)),
                ]
                if o.network == "host":
                    opts.append(oci.with_host_network())
                if o.env:
                    opts.append(oci.with_env(o.env))
                if o.workdir:
                    opts.append(oci.with_cwd(o.workdir))
                if o.user:
                    opts += _user_opts(o.user, root)
                if o.volumes:
                    opts.append(oci.with_mounts(o.volumes))
                if o.tty:
                    opts.append(oci.with_tty())
                opts += _security_opts(security, o.privileged)
                spec = oci.generate_spec(namespace, cid, *opts)
            if not (spec.get("process") or {}).get("args"):
                raise errdefs.InvalidArgument(
                    f"no command to run: image {image.name} has neither an entrypoint nor a "
                    "command; give one after the image")
            return client.containers.create(Container(
                id=cid, runtime=RuntimeInfo(o.runtime), spec=pack_spec(spec), labels=labels,
                image=image.name, snapshotter=o.snapshotter, snapshot_key=cid))
        except BaseException:
            with contextlib.suppress(errdefs.BerthError):
                snapshotter.remove(cid)
            raise


def start_task(client: Client, c: Container, *, attach: Attach | None,
               tty: bool) -> int | None:
    """Step 4 (and 5): a new task for ``c``; attached, its exit status; detached, None (its
    output goes to the container's log file)."""
    if attach is None:
        log_path = cio.log_path(state.namespace, c.id)
        cio.prepare_log(log_path)
        if tty:
            io = IO(stdout=cio.logger_uri(log_path), terminal=True)
        else:
            uri = cio.file_uri(log_path)
            io = IO(stdout=uri, stderr=uri)
        task = client.tasks.create(c.id, CreateOpts(io=io))
        try:
            task.start()
        except BaseException:
            with contextlib.suppress(errdefs.BerthError):
                client.tasks.delete(c.id)
            raise
        return None

    def create(fifos: cio.Fifos) -> None:
        client.tasks.create(c.id, CreateOpts(io=IO(fifos.stdin, fifos.stdout, fifos.stderr,
                                                    terminal=tty)))

    return attached(client, c.id, "", attach, create, lambda: delete_task(client, c.id))


def _remove_quietly(client: Client, c: Container) -> None:
    from berth.cli.containers import remove

    with contextlib.suppress(errdefs.BerthError):
        remove(client, c, force=True)


# -- commands ----------------------------------------------------------------------------------


def run(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="A pulled image.")],
    command: Annotated[list[str] | None, typer.Argument(
        metavar="COMMAND", help="What to run (default: the image's).")] = None,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Run in the background and print the container id.")] = False,
    interactive: Interactive = False,
    tty: Tty = False,
    rm: Annotated[bool, typer.Option(
        "--rm", help="Remove the container (task, snapshot, log) when it exits.")] = False,
    name: Annotated[str | None, typer.Option(
        "--name", help="The container's name, which is also its id (default: random).")
    ] = None,
    env: Env = None,
    workdir: Workdir = None,
    user: User = None,
    volume: Annotated[list[str] | None, typer.Option(
        "--volume", "-v", metavar="SRC:DST[:ro]",
        help="Bind-mount a host path (repeatable).")] = None,
    entrypoint: Annotated[str | None, typer.Option(
        "--entrypoint", help="Replace the image's entrypoint (and ignore its command).")
    ] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="The runtime (shim) to run it with.")] = DEFAULT_RUNTIME,
    snapshotter: Annotated[str | None, typer.Option(
        "--snapshotter", help="Snapshotter of the root filesystem (default: the global one).")
    ] = None,
    network: Annotated[str, typer.Option(
        "--network", "--net", help="none (a loopback of its own) or host.")] = "none",
    security_opt: Annotated[list[str] | None, typer.Option(
        "--security-opt", metavar="OPT",
        help="seccomp=unconfined (no filter), seccomp=PROFILE.json (an OCI linux.seccomp "
             "object), no-new-privileges[=true|false] (repeatable).")] = None,
    privileged: Annotated[bool, typer.Option(
        "--privileged", help="Every capability berth has, every host device, no seccomp "
                             "filter, no masked paths, new privileges allowed.")] = False,
) -> None:
    """Run a command in a new container.

    In the foreground, the container's output is shown (and kept in its log) and its exit
    status becomes berth's; signals berth gets are passed to it. With `-d`, the output goes to
    the container's log file (`berth logs`) and its id is printed. Options go before IMAGE;
    everything after it is the command.
    """
    if detach and rm:
        raise errdefs.InvalidArgument(
            "--rm cannot be used with -d (nothing would be left to remove the container when "
            "it exits); use `berth rm -f` later")
    if detach and interactive:
        raise errdefs.InvalidArgument("-i cannot be used with -d (berth cannot attach later)")
    client = state.client()
    opts = RunOptions(image, list(command or []), name, list(env or []), workdir, user,
                      list(volume or []), entrypoint, runtime, snapshotter or state.snapshotter,
                      network, tty, list(security_opt or []), privileged)
    c = create_container(client, opts)
    attach = None if detach else Attach(stdin=interactive, tty=tty,
                                        log_path=cio.log_path(state.namespace, c.id))
    try:
        status = start_task(client, c, attach=attach, tty=tty)
    except BaseException:
        # A container whose process never started (a command not found, say) is removed, so
        # that running it again, corrected, needs no `berth rm` first.
        with contextlib.suppress(errdefs.BerthError):
            task = find_task(client, c.id)
            if rm or task is None or task.status == STATUS.CREATED:
                _remove_quietly(client, c)
        raise
    if detach:
        print(c.id)
        return
    if rm:
        _remove_quietly(client, c)
    raise typer.Exit(status or 0)


def start(
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    attach: Annotated[bool, typer.Option(
        "--attach", "-a", help="Stay attached: show the output and exit with its status.")
    ] = False,
    interactive: Interactive = False,
) -> None:
    """Start a stopped or created container again, with a new task (its root filesystem and
    log file are kept)."""
    client = state.client()
    c = resolve(client, container)
    task = find_task(client, c.id)
    if task is not None:
        if task.status in (STATUS.RUNNING, STATUS.PAUSED, STATUS.PAUSING):
            if attach:
                raise errdefs.FailedPrecondition(f"container {name_of(c)} is already running")
            print(name_of(c))
            return
        delete_task(client, c.id)
    tty = bool((spec_of(c).get("process") or {}).get("terminal"))
    if not attach:
        if interactive:
            raise errdefs.InvalidArgument("-i needs -a")
        start_task(client, c, attach=None, tty=tty)
        print(name_of(c))
        return
    status = start_task(client, c, attach=Attach(stdin=interactive, tty=tty,
                                                 log_path=cio.log_path(state.namespace, c.id)),
                        tty=tty)
    raise typer.Exit(status or 0)


def exec_(
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    command: Annotated[list[str], typer.Argument(metavar="COMMAND")],
    interactive: Interactive = False,
    tty: Tty = False,
    env: Env = None,
    workdir: Workdir = None,
    user: User = None,
) -> None:
    """Run a command in a running container; berth exits with its status."""
    client = state.client()
    c = resolve(client, container)
    task = find_task(client, c.id)
    if task is None or task.status != STATUS.RUNNING:
        raise errdefs.FailedPrecondition(f"container {name_of(c)} is not running")
    base = spec_of(c)
    process = copy.deepcopy(base.get("process") or {})
    process.pop("terminal", None)
    process.pop("consoleSize", None)
    opts: list[oci.SpecOpt] = [oci.with_process_args(*command)]
    if env:
        opts.append(oci.with_env(env))
    if workdir:
        opts.append(oci.with_cwd(workdir))
    if tty:
        opts.append(oci.with_tty())
    if user:
        if _needs_rootfs(user):
            mounts = client.snapshotter(c.snapshotter).mounts(c.snapshot_key) \
                if c.snapshot_key else []
            with rootfs.mounted(mounts) as root:
                opts += _user_opts(user, root)
        else:
            opts += _user_opts(user, None)
    spec: oci.Spec = oci.compose(*opts)({"process": process, "linux": {}})
    pspec = spec["process"]
    value = json.dumps(pspec, separators=(",", ":")).encode()
    exec_id = f"exec-{secrets.token_hex(6)}"

    def create(fifos: cio.Fifos) -> None:
        client.tasks.task(c.id).exec(exec_id, ExecOpts(
            AnyValue(PROCESS_TYPE_URL, value),
            IO(fifos.stdin, fifos.stdout, fifos.stderr, terminal=tty)))

    def forget() -> None:
        with contextlib.suppress(errdefs.NotFound):
            client.tasks.task(c.id).delete_process(exec_id)

    try:
        status = attached(client, c.id, exec_id, Attach(stdin=interactive, tty=tty), create,
                          forget)
    finally:
        with contextlib.suppress(errdefs.BerthError):
            forget()
    raise typer.Exit(status)


def _needs_rootfs(user: str) -> bool:
    """Whether resolving ``user`` reads the container's /etc/passwd or /etc/group: always, as
    the supplementary groups come from there (unless both ids are numbers)."""
    parts = user.split(":")
    return not (len(parts) == 2 and all(p.isdigit() for p in parts))
