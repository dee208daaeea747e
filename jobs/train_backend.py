"""Ray Train's torch process group with every listener on the worker's own node address.

Ray Train's set-up (``ray.train.torch.TorchConfig``) lets torch's rendezvous store, a
``TCPStore`` that rank 0 hosts, listen on all interfaces (torch has no setting for its bind
address), and gloo picks its interface from the host name. :class:`NodeBoundTorchConfig` does
the same set-up with two changes:

- rank 0 binds a socket to its node's address (what Ray advertises for that node: 127.0.0.1 on
  a loopback cluster) and serves the store on it (``master_listen_fd``); torch's own store for
  ``init_process_group`` then shares that server (``multi_tenant``) instead of opening another;
- ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` name the interface that holds the node's
  address, unless they are set already.

Ray is pinned, and this follows its ``_TorchBackend.on_start`` for the gloo and nccl backends.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import (
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)

_SERVED: list = []  # (socket, TCPStore) kept alive for the worker's lifetime


def interface_of(address: str) -> str | None:
    """The name of the network interface holding ``address`` (e.g. "lo"), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def serve_rendezvous_store(address: str, timeout_s: float) -> int:
    """Serve a ``TCPStore`` on ``address`` only (this process keeps it); returns its port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = dist.TCPStore(
        address,
        port,
        None,
        True,
        datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=sock.fileno(),
    )
    _SERVED.append((sock, store))
    return port


def bind_to_interface(address: str, backend: str) -> None:
    """Point gloo (and NCCL's sockets) at the interface holding ``address``, unless set."""
    name = interface_of(address)
    if name:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        if backend == "nccl":
            os.environ.setdefault("NCCL_SOCKET_IFNAME", name)


def _host_store(timeout_s: float) -> tuple[str, int]:
    address = ray.util.get_node_ip_address()
    return address, serve_rendezvous_store(address, timeout_s)


def _set_env(master_addr: str, master_port: int, backend: str) -> None:
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    bind_to_interface(ray.util.get_node_ip_address(), backend)


class _NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        if backend_config.backend is not None:
            backend = backend_config.backend
        else:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        addr, port = worker_group.execute_single(0, _host_store, backend_config.timeout_s)
        worker_group.execute(_set_env, master_addr=addr, master_port=port, backend=backend)
        worker_group.execute(_set_torch_distributed_env_vars)
        futures = [
            worker_group.execute_single_async(
                i,
                _setup_torch_process_group,
                backend=backend,
                world_rank=i,
                world_size=len(worker_group),
                init_method="env://",
                timeout_s=backend_config.timeout_s,
            )
            for i in range(len(worker_group))
        ]
        ray.get(futures)


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group listens on the node address only (module doc)."""

    @property
    def backend_cls(self):
        return _NodeBoundTorchBackend


def make_trainer(loop, loop_config: dict, run, storage_path: str, filesystem, num_to_keep: int):
    """The ``TorchTrainer`` that ``clipsr train`` and ``clipsr pretrain-clip`` run: ``run`` is
    their config's ``run`` section (name, num_workers, use_gpu, cpus_per_worker, optional
    gpus_per_worker, max_failures); checkpoints go to ``storage_path`` on ``filesystem``."""
    from ray.train.torch import TorchTrainer

    from jobs.ray_setup import train_logging_config

    resources = {"CPU": run.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = getattr(run, "gpus_per_worker", 1)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.num_workers, use_gpu=run.use_gpu, resources_per_worker=resources
        ),
        torch_config=NodeBoundTorchConfig(backend="nccl" if run.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            logging_config=train_logging_config(),
        ),
    )
