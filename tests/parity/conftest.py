"""Parity tier: the peers' released functions against areal_lite's (tests/parity/peers.py)."""

from tests.parity.peers import peer_factory  # noqa: F401  (fixture)
