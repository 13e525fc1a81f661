"""runtime.v1 RuntimeService and ImageService: thin servicers over :class:`~berth.cri.runtime.
Runtime` and :class:`~berth.cri.images.ImageService`.

An RPC not written yet is the generated base class's, which raises ``NotImplementedError``:
the gRPC edge answers it UNIMPLEMENTED, as every other error through :mod:`berth.errdefs`.
"""

from __future__ import annotations

import grpc

from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.api.cri.runtime.v1 import api_pb2_grpc
from berth.cri.containers import Containers
from berth.cri.images import Auth, CRIImage, ImageService
from berth.cri.runtime import Runtime
from berth.cri.sandboxes import Sandboxes, SandboxInfo, sandbox_state
from berth.cri.stats import Stats
from berth.cri.store import Container
from berth.cri.streams import Streaming


def image_message(image: CRIImage) -> pb.Image:
    msg = pb.Image(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                   size=image.size, username=image.username)
    if image.uid is not None:
        msg.uid.value = image.uid
    return msg


def sandbox_message(info: SandboxInfo) -> pb.PodSandbox:
    sb = info.sandbox
    return pb.PodSandbox(id=sb.id, metadata=sb.config.metadata, state=sandbox_state(info.state),
                         created_at=sb.created_at, labels=sb.config.labels,
                         annotations=sb.config.annotations, runtime_handler=sb.runtime_handler)


def sandbox_status(info: SandboxInfo) -> pb.PodSandboxStatus:
    sb = info.sandbox
    status = pb.PodSandboxStatus(
        id=sb.id, metadata=sb.config.metadata, state=sandbox_state(info.state),
        created_at=sb.created_at, labels=sb.config.labels, annotations=sb.config.annotations,
        runtime_handler=sb.runtime_handler,
        network=pb.PodSandboxNetworkStatus(
            ip=info.ip, additional_ips=[pb.PodIP(ip=ip) for ip in info.additional_ips]))
    status.linux.namespaces.options.CopyFrom(sb.config.linux.security_context.namespace_options)
    return status


def container_message(c: Container, image_ref: str) -> pb.Container:
    return pb.Container(id=c.id, pod_sandbox_id=c.sandbox_id, metadata=c.config.metadata,
                        image=c.config.image, image_ref=image_ref, state=c.status.state,
                        created_at=c.status.created_at, labels=c.config.labels,
                        annotations=c.config.annotations)


def container_status(c: Container, image_ref: str) -> pb.ContainerStatus:
    st = c.status
    status = pb.ContainerStatus(
        id=c.id, metadata=c.config.metadata, state=st.state, created_at=st.created_at,
        started_at=st.started_at, finished_at=st.finished_at, exit_code=st.exit_code,
        image=c.config.image, image_ref=image_ref, reason=st.reason, message=st.message,
        labels=c.config.labels, annotations=c.config.annotations, mounts=c.config.mounts,
        log_path=c.log_path)
    status.resources.linux.CopyFrom(c.config.linux.resources)
    return status


class RuntimeServicer(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, runtime: Runtime, sandboxes: Sandboxes, containers: Containers,
                 stats: Stats, streaming: Streaming) -> None:
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.containers = containers
        self.stats = stats
        self.streaming = streaming

    def Version(self, request: pb.VersionRequest,
                context: grpc.ServicerContext) -> pb.VersionResponse:
        version, name, runtime_version, api_version = self.runtime.version()
        return pb.VersionResponse(version=version, runtime_name=name,
                                  runtime_version=runtime_version,
                                  runtime_api_version=api_version)

    def Status(self, request: pb.StatusRequest,
               context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = [pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason,
                                          message=c.message)
                      for c in self.runtime.conditions()]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))

    def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                            context: grpc.ServicerContext) -> pb.UpdateRuntimeConfigResponse:
        self.runtime.update_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- pod sandboxes -------------------------------------------------------------------------

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest,
                      context: grpc.ServicerContext) -> pb.RunPodSandboxResponse:
        return pb.RunPodSandboxResponse(
            pod_sandbox_id=self.sandboxes.run(request.config, request.runtime_handler))

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest,
                       context: grpc.ServicerContext) -> pb.StopPodSandboxResponse:
        self.sandboxes.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                         context: grpc.ServicerContext) -> pb.RemovePodSandboxResponse:
        self.sandboxes.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                         context: grpc.ServicerContext) -> pb.PodSandboxStatusResponse:
        info = self.sandboxes.status(request.pod_sandbox_id, request.verbose)
        return pb.PodSandboxStatusResponse(status=sandbox_status(info), info=info.info)

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest,
                       context: grpc.ServicerContext) -> pb.ListPodSandboxResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxResponse(
            items=[sandbox_message(i) for i in self.sandboxes.list(flt)])

    # -- containers ----------------------------------------------------------------------------

    def CreateContainer(self, request: pb.CreateContainerRequest,
                        context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        return pb.CreateContainerResponse(container_id=self.containers.create(
            request.pod_sandbox_id, request.config, request.sandbox_config))

    def StartContainer(self, request: pb.StartContainerRequest,
                       context: grpc.ServicerContext) -> pb.StartContainerResponse:
        self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    def StopContainer(self, request: pb.StopContainerRequest,
                      context: grpc.ServicerContext) -> pb.StopContainerResponse:
        self.containers.stop(request.container_id, request.timeout)
        return pb.StopContainerResponse()

    def RemoveContainer(self, request: pb.RemoveContainerRequest,
                        context: grpc.ServicerContext) -> pb.RemoveContainerResponse:
        self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    def ListContainers(self, request: pb.ListContainersRequest,
                       context: grpc.ServicerContext) -> pb.ListContainersResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListContainersResponse(containers=[
            container_message(c, c.image_ref) for c in self.containers.list(flt)])

    def ContainerStatus(self, request: pb.ContainerStatusRequest,
                        context: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        c = self.containers.refresh(self.containers.get(request.container_id))
        info = self.containers.verbose(c) if request.verbose else {}
        return pb.ContainerStatusResponse(
            status=container_status(c, self.containers.image_ref(c)), info=info)

    def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                 context: grpc.ServicerContext
                                 ) -> pb.UpdateContainerResourcesResponse:
        self.containers.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                           context: grpc.ServicerContext) -> pb.ReopenContainerLogResponse:
        self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    # -- stats ---------------------------------------------------------------------------------

    def ContainerStats(self, request: pb.ContainerStatsRequest,
                       context: grpc.ServicerContext) -> pb.ContainerStatsResponse:
        c = self.containers.get(request.container_id)
        return pb.ContainerStatsResponse(stats=self.stats.container(c))

    def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                           context: grpc.ServicerContext) -> pb.ListContainerStatsResponse:
        f = request.filter
        flt = pb.ContainerFilter(id=f.id, pod_sandbox_id=f.pod_sandbox_id,
                                 label_selector=f.label_selector)
        return pb.ListContainerStatsResponse(
            stats=self.stats.containers(self.containers.list(flt)))

    def PodSandboxStats(self, request: pb.PodSandboxStatsRequest,
                        context: grpc.ServicerContext) -> pb.PodSandboxStatsResponse:
        info = self.sandboxes.status(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=self.stats.pod(info.sandbox))

    def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                            context: grpc.ServicerContext) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        flt = pb.PodSandboxFilter(id=f.id, label_selector=f.label_selector)
        return pb.ListPodSandboxStatsResponse(
            stats=[self.stats.pod(i.sandbox) for i in self.sandboxes.list(flt)])

    # -- streaming -----------------------------------------------------------------------------

    def Exec(self, request: pb.ExecRequest,
             context: grpc.ServicerContext) -> pb.ExecResponse:
        return pb.ExecResponse(url=self.streaming.exec_url(request))

    def Attach(self, request: pb.AttachRequest,
               context: grpc.ServicerContext) -> pb.AttachResponse:
        return pb.AttachResponse(url=self.streaming.attach_url(request))

    def PortForward(self, request: pb.PortForwardRequest,
                    context: grpc.ServicerContext) -> pb.PortForwardResponse:
        return pb.PortForwardResponse(url=self.streaming.port_forward_url(request))

    def ExecSync(self, request: pb.ExecSyncRequest,
                 context: grpc.ServicerContext) -> pb.ExecSyncResponse:
        result = self.containers.exec_sync(request.container_id, list(request.cmd),
                                           request.timeout)
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                   exit_code=result.exit_code)


class ImageServicer(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService) -> None:
        self.images = images

    def PullImage(self, request: pb.PullImageRequest,
                  context: grpc.ServicerContext) -> pb.PullImageResponse:
        auth = None
        if request.HasField("auth"):
            a = request.auth
            auth = Auth(a.username, a.password, a.auth, a.server_address, a.identity_token)
        return pb.PullImageResponse(image_ref=self.images.pull(request.image.image, auth))

    def ImageStatus(self, request: pb.ImageStatusRequest,
                    context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        image = self.images.status(request.image.image)
        if image is None:
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=image_message(image))

    def ListImages(self, request: pb.ListImagesRequest,
                   context: grpc.ServicerContext) -> pb.ListImagesResponse:
        # containerd 1.6 ignores the filter too.
        return pb.ListImagesResponse(images=[image_message(i) for i in self.images.list()])

    def RemoveImage(self, request: pb.RemoveImageRequest,
                    context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        self.images.remove(request.image.image)
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                    context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        timestamp, mountpoint, used, inodes = self.images.fs_usage()
        usage = pb.FilesystemUsage(timestamp=timestamp,
                                   fs_id=pb.FilesystemIdentifier(mountpoint=mountpoint),
                                   used_bytes=pb.UInt64Value(value=used),
                                   inodes_used=pb.UInt64Value(value=inodes))
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
