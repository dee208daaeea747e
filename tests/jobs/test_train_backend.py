"""The training process group listens on the node address only (no ``*:PORT``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from jobs.train_backend import interface_of

GROUP = textwrap.dedent(
    """
    import json, os, psutil, torch, torch.distributed as dist
    from jobs.train_backend import bind_to_interface, serve_rendezvous_store
    port = serve_rendezvous_store("127.0.0.1", 60)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    bind_to_interface("127.0.0.1", "gloo")
    dist.init_process_group("gloo", init_method="env://", rank=0, world_size=1)
    t = torch.ones(2)
    dist.all_reduce(t)
    listening = [
        [c.laddr.ip, c.laddr.port] for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid == os.getpid()
    ]
    print(json.dumps({"port": port, "listening": listening, "sum": t.tolist(),
                      "ifname": os.environ["GLOO_SOCKET_IFNAME"]}))
    """
)


def test_interface_of_loopback():
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("203.0.113.77") is None  # TEST-NET-3: on no interface here


def test_rank0_store_and_gloo_listen_on_the_node_address_only():
    res = subprocess.run([sys.executable, "-c", GROUP], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["sum"] == [1.0, 1.0] and out["ifname"] == "lo"
    ports = [port for _, port in out["listening"]]
    assert ports.count(out["port"]) == 1  # init_process_group shared the store's server
    assert {ip for ip, _ in out["listening"]} == {"127.0.0.1"}, out["listening"]
