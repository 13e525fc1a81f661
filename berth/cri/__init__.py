"""The Kubernetes CRI (``runtime.v1``), as containerd 1.6.20's CRI plugin
(``io.containerd.grpc.v1.cri``) serves it on berthd's socket.

Local objects do the work (:mod:`~berth.cri.images` the image service over the metadata stores and
the daemon-side puller, :mod:`~berth.cri.runtime` the runtime's version and conditions); the
servicers in :mod:`~berth.cri.service` only convert messages. Everything the CRI keeps lives in
the namespace ``k8s.io``, whatever namespace a client's metadata names.
"""

NAMESPACE = "k8s.io"
PLUGIN = "io.containerd.grpc.v1.cri"
