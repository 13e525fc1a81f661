"""Berth's runtime v2 shim (``containerd-shim-berth-v2``): one small process per group of
containers (a pod, or up to 16 of a namespace's) that drives runc, owns the containers' stdio
and reaps their exits.

* :mod:`~berth.shim.main`: the command line (``start``, ``delete``), whose names it shares with
  the daemon in :mod:`berth.shimcontract`; :mod:`~berth.shim.cmdline`: parsing it.
* :mod:`berth.shimgroups` (shared with berthd): which shim a task joins (its socket
  address), when a shim leaves.
* :mod:`berth.shimlaunch` (shared with berthd, which starts its own shim without the binary):
  starting a task's shim (the group's socket, a fork from the zygote), and the zygote's client.
* :mod:`~berth.shim.zygote`: the fork server that forks each shim (shared memory).
* :mod:`~berth.shim.server`: the shim process's loop, ttrpc on the socket ``start`` bound.
* :mod:`~berth.shim.service`: the ``containerd.task.v2.Task`` RPCs.
* :mod:`~berth.shim.container`, :mod:`~berth.shim.process`: a container, its init and exec
  processes and their lifecycle.
* :mod:`~berth.shim.runc`, :mod:`~berth.shim.options`: the OCI runtime binary (runc, crun)
  and the task's runtime options.
* :mod:`~berth.shim.stdio`: FIFOs, files, logging binaries and terminals.
* :mod:`~berth.shim.reaper`, :mod:`berth.spawn`: the one collector of child exits (the shim
  is a subreaper), and starting children with exactly the fds they should have.
* :mod:`~berth.shim.cgroups`: statistics and OOM events.
* :mod:`~berth.shim.events`: events forwarded to the daemon.
* :mod:`~berth.shim.lean`: what the shim process does without, to stay small.

Nothing here is imported by the daemon: the modules load in the shim's own process, and they
import only the bottom of Berth (errdefs, identifiers, namespaces, logfmt, mount, ttrpc, the
generated API) and :mod:`berth.shimcontract`. Within the package, imports form no cycle.
"""
