"""A run bound to a real (non-loopback) interface trains, and nothing of it listens anywhere else.

`cluster.bind_host` set to one of this machine's own addresses is what a multi-node run needs: the
servers, the controller's sockets and torchrun's rendezvous store must listen on that address (not
on every interface), the launcher's health probes and the workers must reach them there, and the
run is authenticated (a per-run secret and API key). The address is this machine's first non-loopback
IPv4 address, or else one on a veth pair the test creates (root, iproute2); without either the test
is skipped, saying why.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

import psutil
import pytest

from tests.e2e.conftest import read_jsonl, run_dir, write_config
from tests.reliability.audit import ListenWatch, launched

LOCAL = "areal_lite.launcher.local"
VETH, VETH_PEER, VETH_ADDR = "arl-test0", "arl-test1", "10.213.7.1"


def own_address() -> str | None:
    """The first IPv4 address of an interface that is up and not loopback."""
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if not (stats.get(name) and stats[name].isup):
            continue
        for a in addrs:
            if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


@contextmanager
def interface_address() -> Iterator[str]:
    address = own_address()
    if address is not None:
        yield address
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("no non-loopback interface, and creating one needs root and iproute2")
    made = subprocess.run(["ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no non-loopback interface, and `ip link add ... type veth` failed: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "addr", "add", f"{VETH_ADDR}/30", "dev", VETH], check=True)
        for name in (VETH, VETH_PEER):
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield VETH_ADDR
    finally:
        subprocess.run(["ip", "link", "del", VETH], capture_output=True)  # removes the peer too


@pytest.mark.timeout(400)
def test_a_run_bound_to_a_real_interface_trains_and_listens_only_there(tmp_path, tiny_model_dir):
    with interface_address() as address:
        cfg = write_config(tmp_path, tiny_model_dir, {"cluster": {"bind_host": address}})
        with launched(LOCAL, cfg, "total_train_steps=3") as launch:
            watch = ListenWatch(launch.proc.pid)
            rc = launch.wait(300)
            listening = watch.stop()
        assert rc == 0, launch.output
        assert f"server(s) healthy: http://{address}:" in launch.output
        assert [m["step"] for m in read_jsonl(run_dir(tmp_path) / "metrics.jsonl")] == [0, 1, 2]
        # The server, the controller's sockets and the rendezvous store on the address; only the
        # trainer rank's own gloo listener on loopback; nothing on every interface.
        assert "0.0.0.0" not in listening and "::" not in listening, listening
        assert set(listening) <= {address, "127.0.0.1"}, listening
        kinds = " ".join(listening[address])
        assert "launch_server" in kinds and "areal_lite.launcher.torchrun" in kinds and "gsm8k_drgrpo" in kinds
        assert launch.leftovers() == []
