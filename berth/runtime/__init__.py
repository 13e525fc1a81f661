"""Runtime v2: tasks run by per-container shims that berthd starts and talks to over ttrpc.

* :mod:`~berth.runtime.runtime`: the :class:`Runtime` and :class:`Task` Protocols, their
  lifecycle contract and domain types (what the Tasks service, and the CRI, program against).
* :mod:`~berth.runtime.manager`: the :class:`TaskManager` that implements them with shims:
  creating tasks, finding them again after a restart, cleaning up after dead shims.
* :mod:`~berth.runtime.shimtask`: a task served by a shim; :mod:`~berth.runtime.taskclient`:
  the typed ttrpc client of a shim's ``containerd.task.v2.Task``; :mod:`~berth.runtime.shimproto`:
  the runtime's types to and from the shim's messages.
* :mod:`~berth.runtime.shim`: shim binaries as berthd runs them (the contract's names are
  :mod:`berth.shimcontract`'s); :mod:`~berth.runtime.bundle`: task bundles on disk.
* :mod:`~berth.runtime.events`: the ttrpc endpoint shims forward their events to.
"""
