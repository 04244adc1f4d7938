"""A minimal CRI client: kubelet's calls to run a pod, pull an image and checkpoint a
container, over containerd's gRPC socket.

There is no crictl in the package registries; this is grpcio and a subset of the CRI proto
(tests/cri/api.proto, upstream field numbers), compiled with grpcio-tools when first used.
"""
import atexit
import os
import shutil
import sys
import tempfile

CRI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri")
_mods = None


def modules():
    global _mods
    if _mods is None:
        import grpc_tools
        from grpc_tools import protoc
        out = tempfile.mkdtemp(prefix="cri-gen-")
        atexit.register(shutil.rmtree, out, True)
        rc = protoc.main(["protoc", "-I", CRI_DIR,
                          "-I", os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"),
                          "--python_out", out, "--grpc_python_out", out,
                          os.path.join(CRI_DIR, "api.proto")])
        if rc != 0:
            raise RuntimeError("protoc failed on tests/cri/api.proto")
        sys.path.insert(0, out)
        import api_pb2
        import api_pb2_grpc
        _mods = (api_pb2, api_pb2_grpc)
    return _mods


class CRI:
    def __init__(self, sock):
        import grpc
        self.pb, grpc_mod = modules()
        self.channel = grpc.insecure_channel("unix://" + sock)
        self.rt = grpc_mod.RuntimeServiceStub(self.channel)
        self.img = grpc_mod.ImageServiceStub(self.channel)

    def version(self):
        return self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=10)

    def sandbox_config(self, name, log_dir, annotations=None):
        pb = self.pb
        ns = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=name + "-uid", namespace="default"),
            log_directory=log_dir, annotations=annotations or {},  # no hostname: host network
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)))

    def run_pod(self, config, handler):
        return self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(
            config=config, runtime_handler=handler), timeout=120).pod_sandbox_id

    def create_container(self, pod_id, pod_config, name, image, command, log_path, envs=None,
                         mounts=(), devices=()):
        """envs: {name: value}; mounts: (host path, container path, readonly); devices: host
        paths (rwm, the same path inside) or (host path, container path)."""
        pb = self.pb
        ns = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
            command=list(command), log_path=log_path,
            envs=[pb.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
            mounts=[pb.Mount(host_path=h, container_path=c, readonly=ro) for h, c, ro in mounts],
            devices=[pb.Device(host_path=h, container_path=c, permissions="rwm")
                     for h, c in ((d, d) if isinstance(d, str) else d for d in devices)],
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(namespace_options=ns)))
        return self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_config),
            timeout=180).container_id

    def start(self, cid):
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=60)

    def status(self, cid):
        return self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=cid),
                                       timeout=30).status

    def state_name(self, cid):
        return self.pb.ContainerState.Name(self.status(cid).state)

    def remove_pod(self, pod_id):
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=60)

    def checkpoint(self, cid, location, timeout=120):
        """kubelet's CheckpointContainer (KEP-2008): the archive is written to location (an
        absolute path on the containerd host). containerd ignores the request's timeout field;
        only the gRPC deadline bounds it, so both are set."""
        self.rt.CheckpointContainer(self.pb.CheckpointContainerRequest(
            container_id=cid, location=location, timeout=timeout), timeout=timeout)

    def pull(self, image, timeout=180, auth=None):
        """PullImage; returns the image ref (its id) containerd reports. auth: (user,
        password), as kubelet passes an image pull secret."""
        kw = {}
        if auth:
            kw["auth"] = self.pb.AuthConfig(username=auth[0], password=auth[1])
        return self.img.PullImage(self.pb.PullImageRequest(
            image=self.pb.ImageSpec(image=image), **kw), timeout=timeout).image_ref

    def image_status(self, image):
        """The Image record (id, repo_tags, repo_digests), or None when it is not there."""
        r = self.img.ImageStatus(self.pb.ImageStatusRequest(
            image=self.pb.ImageSpec(image=image)), timeout=30)
        return r.image if r.HasField("image") else None
