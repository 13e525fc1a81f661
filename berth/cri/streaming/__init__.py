"""The CRI streaming server: the HTTP endpoint behind the URLs that Exec, Attach and PortForward
return, where kubectl, the kubelet and critest connect to run a command, attach to a container or
forward a port. Each concern is a module of its own: single-use tokens naming the pending
requests, the wire protocols the clients upgrade to (SPDY/3.1 in :mod:`.spdy`, a sans-IO core),
and the sessions that carry a process's streams over them.
"""
