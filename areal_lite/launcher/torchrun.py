"""torchrun whose rendezvous store listens only on the address it is given, not on every interface.

    python -m areal_lite.launcher.torchrun --rdzv-backend static-bound --rdzv-endpoint 127.0.0.1:PORT \\
        --rdzv-conf rank=0 --nnodes 1 --nproc-per-node 2 --max-restarts 0 ENTRY.py --config X.yaml

torch's TCPStore server binds `::` (every interface) whatever host it is told, so during start-up a
plain torchrun exposes an unauthenticated key-value store to the network. The store's documented
`master_listen_fd` option takes a socket that is already bound: the `static-bound` rendezvous (torch's
static rendezvous, registered under its own name the way torch documents custom handlers) binds
one at the endpoint's address and hands it over. Everything else is torchrun's own `main`.
"""

from __future__ import annotations

import socket
import sys

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous, create_rdzv_handler

BACKEND = "static-bound"


def listening_socket(host: str, port: int) -> int:
    """A TCP socket listening on `host:port` only; returns its descriptor (owned by the caller)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    return sock.detach()


class BoundStaticRendezvous(StaticTCPRendezvous):
    """torch's static rendezvous, with the store of node 0 listening on the endpoint's address alone."""

    def get_backend(self) -> str:
        return BACKEND

    def next_rendezvous(self):
        if self._store is None and self.rank == 0:
            # NOTE: the base class creates a store only when none is set.
            self._store = TCPStore(self.master_addr, self.master_port, self.world_size, True, self.timeout,
                                   multi_tenant=True, master_listen_fd=listening_socket(self.master_addr,
                                                                                        self.master_port))
        return super().next_rendezvous()


def create_bound_handler(params: RendezvousParameters) -> BoundStaticRendezvous:
    h = create_rdzv_handler(params)  # torch's checks of the endpoint, rank and timeout
    # `--rdzv-conf rank=K` arrives as a string (static's `--node-rank` is an int).
    return BoundStaticRendezvous(h.master_addr, h.master_port, int(h.rank), h.world_size, h.run_id,
                                 int(h.timeout.total_seconds()))


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.run import main as torchrun_main

    rendezvous_handler_registry.register(BACKEND, create_bound_handler)
    torchrun_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
