"""A minimal CRI client: kubelet's calls to run a pod, over containerd's gRPC socket.

There is no crictl in the package registries; this is grpcio and a subset of the CRI proto
(tests/cri/api.proto, upstream field numbers), compiled with grpcio-tools when first used.
"""
import os
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

    def create_container(self, pod_id, pod_config, name, image, command, log_path):
        pb = self.pb
        ns = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
            command=list(command), log_path=log_path,
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
