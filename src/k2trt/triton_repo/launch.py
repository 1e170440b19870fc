"""Launch artifacts for a packaged repository, generated from data.

- `serve-docker.sh`: one node, `tritonserver` in the container (TensorRT-LLM's LLM API
  starts its own workers for the node's GPUs); written only when the world fits one node.
- `serve-mpirun.sh`: several hosts, one `mpirun` started inside the container on the first.
- `serve.sbatch`: the same under Slurm (`srun --mpi=pmix`, pyxis/enroot container).
- `lws.yaml`: Kubernetes LeaderWorkerSet (one pod per node) and a Service for the leader.
- `Dockerfile`: the serving image: NVIDIA's container plus k2trt (the model.py files import it).

Multi-node follows upstream (NVIDIA/TensorRT-LLM triton_backend/scripts/launch_triton_server.py
with --trtllm_llmapi_launch, and tensorrt_llm/llmapi/trtllm-llmapi-launch): every MPI rank runs
`trtllm-llmapi-launch tritonserver ...`; rank 0 gets the whole repository, the others
`--model-control-mode=explicit --load-model=tensorrt_llm`, each its own shared-memory prefix,
auto-complete off. trtllm-llmapi-launch itself then runs tritonserver on rank 0 only (with the
MPI environment cleared, so the LLM API talks to the other ranks through its MPI session) and
turns every other rank into a TensorRT-LLM worker; rank 0 serves HTTP/gRPC.

Scripts are argv lists rendered with shell quoting; `Var` arguments become "${NAME}", set at
the top of the script from the environment with the packaged values as defaults.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

# nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3: Triton 2.64 with TensorRT-LLM 1.1.0
# and Python 3.12 (Triton's release compatibility matrix, "Container Name: trtllm-python-py3",
# docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/introduction/
# compatibility.html). The BLS iterator's cancel() is there (python_backend 7f21b67, 25.04+).
CONTAINER = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
IMAGE = "k2trt-triton:latest"  # built from launch/Dockerfile
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
SSH_PORT = 2222  # Kubernetes: sshd in worker pods, for mpirun
LWS_NAME = "k2trt"
SSH_SECRET = "k2trt-ssh"  # id_ed25519 + authorized_keys for the pods' mpirun


@dataclass(frozen=True)
class Var:
    """A script argument taken from a variable: rendered "${NAME}"."""

    name: str


Arg = str | Var


@dataclass(frozen=True)
class Env:
    """A variable a script reads, with its default (None: the user must set it)."""

    name: str
    default: str | None
    help: str


@dataclass(frozen=True)
class Script:
    """A bash script: header comments, variables, then commands (argv lists)."""

    comments: tuple[str, ...]
    env: tuple[Env, ...]
    commands: tuple[tuple[Arg, ...], ...]
    exec_last: bool = True  # the last command replaces the shell (signals reach it)
    directives: tuple[str, ...] = ()  # lines right after the shebang (#SBATCH ...)

    def text(self) -> str:
        """The script text (ends with a newline)."""
        lines = ["#!/usr/bin/env bash", *self.directives]
        lines += [f"# {c}" if c else "#" for c in self.comments]
        lines.append("set -euo pipefail")
        for var in self.env:
            lines.append(f"# {var.name}: {var.help}")
            if var.default is None:
                lines.append(f': "${{{var.name}:?set {var.name} ({var.help})}}"')
            else:
                lines.append(f"{var.name}=${{{var.name}:-{shlex.quote(var.default)}}}")
        for i, argv in enumerate(self.commands):
            prefix = "exec " if self.exec_last and i == len(self.commands) - 1 else ""
            lines.append(prefix + render_argv(argv))
        return "\n".join(lines) + "\n"


PROGRAMS = frozenset({"tritonserver", "trtllm-llmapi-launch"})


def render_argv(argv: Sequence[Arg]) -> str:
    r"""One command line, wrapped before each option, variable and program for reading.

    >>> print(render_argv(["echo", Var("X"), "a b", "--flag=1"]))
    echo \
        "${X}" 'a b' \
        --flag=1
    """
    words = [f'"${{{a.name}}}"' if isinstance(a, Var) else shlex.quote(a) for a in argv]
    out = words[0]
    for i in range(1, len(argv)):
        arg, prev = argv[i], argv[i - 1]
        after_count = isinstance(prev, str) and (prev.isdigit() or prev in PROGRAMS)
        wrap = (
            isinstance(arg, Var)
            or arg.startswith("-")
            or arg == ":"
            or (arg in PROGRAMS and not after_count)
        )
        out += (" \\\n    " if wrap else " ") + words[i]
    return out


@dataclass(frozen=True)
class Deployment:
    """What every launcher needs, from the bundle and the packaged repository."""

    repo: str  # absolute path of the repository
    checkpoint: str  # absolute path of the checkpoint (model.yaml's `model`)
    world_size: int
    gpus_per_node: int
    model_id: str
    llm_model: str = "tensorrt_llm"
    container: str = CONTAINER
    image: str = IMAGE

    @property
    def nodes(self) -> int:
        """Hosts: world size over GPUs per node, rounded up."""
        return -(-self.world_size // self.gpus_per_node)

    @property
    def gpus_on_node(self) -> int:
        """GPUs each host runs (the whole world on one node when it fits)."""
        return min(self.world_size, self.gpus_per_node)


def tritonserver_args(d: Deployment, rank: int | None) -> list[Arg]:
    """`tritonserver` and its flags; `rank` > 0 loads only the LLM (None: single process)."""
    args: list[Arg] = [
        "tritonserver",
        f"--model-repository={d.repo}",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name=prefix{rank or 0}_",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
    ]
    if rank:
        args += ["--model-control-mode=explicit", f"--load-model={d.llm_model}"]
    return args


def _image_env(d: Deployment) -> Env:
    return Env("K2TRT_IMAGE", d.image, "the serving image (docker build -f launch/Dockerfile)")


def docker_script(d: Deployment) -> Script:
    """Single node: tritonserver in the container, all of the node's GPUs.

    The repository and the checkpoint are mounted at the paths they were packaged with
    (model.yaml names the checkpoint's); to move them, run `k2trt package` again."""
    run: list[Arg] = [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host",
        "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
        "-p", f"{HTTP_PORT}:{HTTP_PORT}", "-p", f"{GRPC_PORT}:{GRPC_PORT}",
        "-p", f"{METRICS_PORT}:{METRICS_PORT}",
        "-v", f"{d.repo}:{d.repo}:ro", "-v", f"{d.checkpoint}:{d.checkpoint}:ro",
        Var("K2TRT_IMAGE"), *tritonserver_args(d, None),
    ]  # fmt: skip
    return Script(
        comments=(
            f"k2trt: serve {d.model_id} on one node ({d.gpus_on_node} GPU(s)): Triton on "
            f":{HTTP_PORT} (HTTP), :{GRPC_PORT} (gRPC), :{METRICS_PORT} (metrics).",
            "Generated by `k2trt package`.",
        ),
        env=(_image_env(d),),
        commands=(tuple(run),),
    )


def mpirun_argv(d: Deployment, hosts: Arg, extra: Sequence[Arg] = ()) -> list[Arg]:
    """One mpirun for the whole world: rank 0 serves, ranks 1.. are LLM workers."""
    argv: list[Arg] = ["mpirun", "--allow-run-as-root", "--host", hosts, *extra]
    argv += ["-n", "1", "trtllm-llmapi-launch", *tritonserver_args(d, 0)]
    if d.world_size > 1:
        argv += [":", "-n", str(d.world_size - 1), "trtllm-llmapi-launch"]
        argv += tritonserver_args(d, 1)
    return argv


def mpirun_script(d: Deployment) -> Script:
    """Several hosts: run inside the serving container on the first host."""
    slots = ",".join(f"host{i + 1}:{d.gpus_on_node}" for i in range(d.nodes))
    return Script(
        comments=(
            f"k2trt: serve {d.model_id} on {d.nodes} host(s) x {d.gpus_on_node} GPU(s) "
            f"= world size {d.world_size}, with one mpirun.",
            "Run it inside the serving container on the first host. Every host runs the same",
            "container with the repository and the checkpoint at the same paths, and reaches",
            "the others by passwordless ssh (as mpirun needs). Rank 0 serves HTTP/gRPC.",
        ),
        env=(Env("K2TRT_HOSTS", None, f"mpirun --host list, e.g. {slots}"),),
        commands=(tuple(mpirun_argv(d, Var("K2TRT_HOSTS"))),),
    )


def sbatch_script(d: Deployment) -> Script:
    """Slurm: one task per GPU, the container through pyxis (srun --container-image)."""
    directives = (
        "#SBATCH --job-name=k2trt-triton",
        f"#SBATCH --nodes={d.nodes}",
        f"#SBATCH --ntasks-per-node={d.gpus_on_node}",
        f"#SBATCH --gpus-per-node={d.gpus_on_node}",
        "#SBATCH --exclusive",
    )
    srun: list[Arg] = [
        "srun", "--mpi=pmix", f"--nodes={d.nodes}", f"--ntasks-per-node={d.gpus_on_node}",
        "--container-image", Var("K2TRT_IMAGE"),
        "--container-mounts", f"{d.repo}:{d.repo}:ro,{d.checkpoint}:{d.checkpoint}:ro",
        "trtllm-llmapi-launch", *tritonserver_args(d, None),
    ]  # fmt: skip
    return Script(
        comments=(
            f"k2trt: serve {d.model_id} under Slurm: {d.nodes} node(s) x {d.gpus_on_node} "
            f"GPU(s) = world size {d.world_size}. Submit with `sbatch serve.sbatch`.",
            "Every task runs the same command; trtllm-llmapi-launch starts tritonserver on",
            "rank 0 (the first node serves HTTP/gRPC) and a TensorRT-LLM worker elsewhere.",
        ),
        env=(_image_env(d),),
        commands=(tuple(srun),),
        directives=directives,
    )


# What the container ships, frozen before k2trt goes in (pip constraints, not requirements).
CONTAINER_PINS = "/opt/k2trt-src/container-pins.txt"


def dockerfile(d: Deployment) -> str:
    """The serving image: NVIDIA's container, sshd for multi-node mpirun, and k2trt.

    Built from a k2trt source checkout: `docker build -f OUT/launch/Dockerfile -t IMAGE .`.
    k2trt goes in with its dependencies, constrained to what the container already has
    (`pip list --format=freeze`, which names direct-URL installs such as tensorrt_llm by
    version too), so the container's torch and transformers stay and only what is missing is
    added; a conflict fails the build instead of replacing a package. K2TRT_PYTHONPATH stays
    unset there."""
    steps = [
        ("FROM", d.container),
        ("RUN", "apt-get update && apt-get install -y --no-install-recommends "
                "openssh-server openssh-client && rm -rf /var/lib/apt/lists/* "
                "&& mkdir -p /run/sshd"),
        ("COPY", "pyproject.toml README.md /opt/k2trt-src/"),
        ("COPY", "src /opt/k2trt-src/src"),
        ("RUN", f"pip list --format=freeze > {CONTAINER_PINS} "
                f"&& pip install --no-cache-dir --constraint {CONTAINER_PINS} /opt/k2trt-src "
                "&& k2trt --version"),
    ]  # fmt: skip
    head = [
        f"# k2trt serving image for {d.model_id}: {d.container} + k2trt.",
        f"# Build from a k2trt checkout: docker build -f OUT/launch/Dockerfile -t {d.image} .",
    ]
    return "\n".join(head + [f"{op} {arg}" for op, arg in steps]) + "\n"


def lws_manifest(
    d: Deployment, name: str = LWS_NAME, labels: Mapping[str, str] | None = None
) -> list[dict[str, object]]:
    """A LeaderWorkerSet (one pod per node) and a Service for the leader's ports.

    The leader runs the same mpirun as serve-mpirun.sh over ssh to its workers (sshd on
    port SSH_PORT, keys from the Secret SSH_SECRET); pod DNS names come from LWS's
    headless service: leader `$(LWS_LEADER_ADDRESS)`, worker i `NAME-GROUP-i.NAME`.
    `name` and `labels` (on the set, its pods and the Service) let two deployments run side
    by side (release.bluegreen)."""
    extra = dict(labels or {})
    group = "$(LWS_GROUP_INDEX)"
    workers = [f"{name}-{group}-{i}.{name}:{d.gpus_on_node}" for i in range(1, d.nodes)]
    hosts = ",".join([f"$(LWS_LEADER_ADDRESS):{d.gpus_on_node}", *workers])
    ssh = f"-p {SSH_PORT} -i /etc/k2trt-ssh/id_ed25519 -o StrictHostKeyChecking=no"
    leader_cmd = mpirun_argv(d, hosts, ["--mca", "plm_rsh_args", ssh])
    sshd = [
        "/usr/sbin/sshd",
        "-D",
        "-p",
        str(SSH_PORT),
        "-o",
        "AuthorizedKeysFile=/etc/k2trt-ssh/authorized_keys",
    ]
    lws: dict[str, object] = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "labels": {"app": name, **extra}},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                # Default restart policy: a leader whose mpirun found a worker's sshd not up
                # yet restarts alone and tries again.
                "size": d.nodes,
                "leaderTemplate": _pod(d, "leader", [str(a) for a in leader_cmd], True, extra),
                "workerTemplate": _pod(d, "worker", sshd, False, extra),
            },
        },
    }
    metadata: dict[str, object] = {"name": f"{name}-triton"}
    if extra:
        metadata["labels"] = extra
    service: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": {"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"},
            "ports": [
                {"name": n, "port": p, "targetPort": p}
                for n, p in (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))
            ],
        },
    }
    return [lws, service]


def _pod(
    d: Deployment,
    role: str,
    command: list[str],
    serve: bool,
    labels: Mapping[str, str] | None = None,
) -> dict[str, object]:
    container: dict[str, object] = {
        "name": role,
        "image": d.image,
        "command": command,
        "env": [
            {
                "name": "LWS_GROUP_INDEX",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"
                    }
                },
            }
        ],
        "resources": {"limits": {"nvidia.com/gpu": d.gpus_on_node}},
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model", "mountPath": d.checkpoint, "readOnly": True},
            {"name": "repo", "mountPath": d.repo, "readOnly": True},
            {"name": "ssh", "mountPath": "/etc/k2trt-ssh", "readOnly": True},
        ],
    }
    if serve:
        container["ports"] = [{"containerPort": p} for p in (HTTP_PORT, GRPC_PORT, METRICS_PORT)]
        container["readinessProbe"] = {
            "httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT},
            "periodSeconds": 10,
            "failureThreshold": 360,  # a 1 TB checkpoint takes long to load
        }
    return {
        "metadata": {"labels": {"role": role, **(labels or {})}},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                # Replace the hostPath volumes with the PVCs that hold them in your cluster.
                {"name": "model", "hostPath": {"path": d.checkpoint}},
                {"name": "repo", "hostPath": {"path": d.repo}},
                {"name": "ssh", "secret": {"secretName": SSH_SECRET, "defaultMode": 0o400}},
            ],
        },
    }


def lws_yaml(d: Deployment) -> str:
    """The manifest as YAML (two documents)."""
    return str(yaml.safe_dump_all(lws_manifest(d), sort_keys=True))


def artifacts(d: Deployment) -> dict[str, str]:
    """File name -> text for launch/ (serve-docker.sh only when one node holds the world)."""
    single = {"serve-docker.sh": docker_script(d).text()} if d.nodes == 1 else {}
    return {
        **single,
        "serve-mpirun.sh": mpirun_script(d).text(),
        "serve.sbatch": sbatch_script(d).text(),
        "lws.yaml": lws_yaml(d),
        "Dockerfile": dockerfile(d),
    }
