"""gRPC servicers: each method is a thin adapter from containerd's API to a local object."""
