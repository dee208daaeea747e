"""The jobs' connection to Ray: loopback clusters on 127.0.0.1 with every listener there."""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest

from pipelines.ray_cluster import alive_nodes, cluster_address, is_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("", True),
        ("local", True),
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("127.0.0.2:6379", True),
        ("[::1]:6379", True),
        ("10.0.0.5:6379", False),
        ("head.example.com:6379", False),
        ("ray://127.0.0.1:10001", False),  # Ray Client: passed to Ray unchanged
        ("auto", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_the_configured_address_wins_over_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address("") == "10.0.0.5:6379"
    assert cluster_address("127.0.0.1:1234") == "127.0.0.1:1234"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address("") == ""


def listeners(pids: set[int]) -> list[tuple[int, str, int]]:
    return [
        (c.pid, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def test_a_local_ray_advertises_and_listens_on_loopback_only(ray_session):
    """Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, Ray would advertise the host's address and
    listen on every interface; the jobs' init_ray keeps a local Ray on 127.0.0.1."""
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    nodes = alive_nodes(ray_session)
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]

    @ray_session.remote(num_cpus=0)
    def where() -> str:
        return ray_session.util.get_node_ip_address()

    assert ray_session.get(where.remote()) == "127.0.0.1"
    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    found = listeners(pids)
    assert found, "Ray's servers should be among this process tree's listeners"
    outside = [(pid, ip, port) for pid, ip, port in found if not _loopback(ip)]
    assert not outside, f"listening beyond loopback: {outside}"


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
