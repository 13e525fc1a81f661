"""The shim binary's command-line contract (runtime v2), named once for both of its sides:
berthd runs shim binaries by it (:mod:`berth.runtime.shim`), Berth's shim answers it
(:mod:`berth.shim.main`). Third-party shims (``containerd-shim-runc-v2``, Kata, runsc) keep the
same contract, as containerd runs them; the ``BERTH_SHIM_*`` variables are understood by Berth's
shim alone.

The daemon runs the binary in the task's bundle directory::

    <binary> -namespace NS -address GRPC -publish-binary DAEMON -id ID start
    <binary> -namespace NS -address GRPC -publish-binary DAEMON -id ID [-bundle DIR] delete

* ``start`` starts the long-lived shim process (or finds the one the task joins), writes its
  ttrpc address (``unix:///path``) into the bundle's ``address`` file, prints it on stdout and
  exits. Runtime options (a serialized ``google.protobuf.Any``) may come on stdin. The shim's
  own log goes to the bundle's ``log`` FIFO.
* ``delete`` cleans up after a shim that died (the container killed and deleted, its rootfs
  unmounted) and prints a ``containerd.task.v2.DeleteResponse`` (protobuf) on stdout: exit
  status :data:`DEAD_EXIT_STATUS` when nothing better is known.
* Everything else goes over ttrpc to the printed address: ``containerd.task.v2.Task``.

The environment names where events go (``TTRPC_ADDRESS``: ``containerd.services.events.ttrpc
.v1.Events``), the daemon's address and the namespace again, and, for Berth's shim, whether a
namespace's tasks share shims and how many to one.

Only names and a few literals live here, and nothing is imported: the shim's ``start`` loads
this module on the path of every container start (see berth.shim.lean).
"""

# -- actions and flags (Go ``flag`` syntax: ``-name value``) ------------------------------------

ACTION_START = "start"
ACTION_DELETE = "delete"

FLAG_NAMESPACE = "namespace"
FLAG_ADDRESS = "address"  # the daemon's gRPC address
FLAG_PUBLISH_BINARY = "publish-binary"  # the daemon's binary (containerd's ``publish`` command)
FLAG_ID = "id"
FLAG_BUNDLE = "bundle"  # ``delete``: the bundle, when not the working directory
FLAG_SOCKET = "socket"  # accepted for containerd's shims; unused by Berth's
FLAG_DEBUG = "debug"
FLAG_VERSION = "v"

STRING_FLAGS = frozenset({FLAG_NAMESPACE, FLAG_ID, FLAG_ADDRESS, FLAG_PUBLISH_BINARY,
                          FLAG_BUNDLE, FLAG_SOCKET})
BOOL_FLAGS = frozenset({FLAG_DEBUG, FLAG_VERSION})

# -- environment --------------------------------------------------------------------------------

TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS"  # where the shim forwards its events
GRPC_ADDRESS_ENV = "GRPC_ADDRESS"
NAMESPACE_ENV = "NAMESPACE"
MAX_SHIM_VERSION_ENV = "MAX_SHIM_VERSION"
MAX_SHIM_VERSION = "2"

GROUP_ENV = "BERTH_SHIM_GROUP"  # GROUP_BY_NAMESPACE, or unset: a shim per task (or pod)
GROUP_BY_NAMESPACE = "namespace"
GROUP_SIZE_ENV = "BERTH_SHIM_GROUP_SIZE"  # tasks one shared shim serves at most
DEFAULT_GROUP_SIZE = 16
LINGER_ENV = "BERTH_SHIM_LINGER"  # seconds an idle group shim waits for a next task
DEFAULT_LINGER = 2.0
LISTEN_FD = 3  # the shim process's listening socket, as ``start`` (or the zygote) hands it over
ZYGOTE_ENV = "BERTH_SHIM_ZYGOTE"  # "off": start each shim as a new interpreter, no fork server

# -- the bundle directory ------------------------------------------------------------------------

SPEC_FILE = "config.json"  # the OCI runtime spec
ROOTFS_DIR = "rootfs"  # where the shim mounts the task's root filesystem
LOG_FIFO = "log"  # the shim's own log; the daemon reads it
ADDRESS_FILE = "address"  # the shim's ttrpc address, written by ``start``
BINARY_FILE = "shim-binary-path"  # the binary the daemon started, written by the daemon

UNIX_SCHEME = "unix://"
DEAD_EXIT_STATUS = 128 + 9  # a shim that died took its task with it, as SIGKILL would


def command(binary: str, action: str, *, namespace: str, address: str, publish_binary: str,
            task_id: str) -> list[str]:
    """The command line that runs ``binary``'s ``action`` for a task."""
    return [binary, f"-{FLAG_NAMESPACE}", namespace, f"-{FLAG_ADDRESS}", address,
            f"-{FLAG_PUBLISH_BINARY}", publish_binary, f"-{FLAG_ID}", task_id, action]
