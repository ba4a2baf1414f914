"""ZeroMQ + msgpack transport: message schema and codec, trajectory groups, sockets. No pickle."""

from areal_lite.transport.group import TrajectoryGroup, decode_group, encode_group
from areal_lite.transport.protocol import (
    PROTOCOL_VERSION,
    REGISTRY,
    Codec,
    Message,
    ProtocolError,
    new_run_secret,
    register_message,
)
from areal_lite.transport.sockets import (
    AsyncDealer,
    AsyncPusher,
    AsyncSubscriber,
    Publisher,
    PullReceiver,
    RouterServer,
)

__all__ = [
    "PROTOCOL_VERSION",
    "REGISTRY",
    "AsyncDealer",
    "AsyncPusher",
    "AsyncSubscriber",
    "Codec",
    "Message",
    "ProtocolError",
    "Publisher",
    "PullReceiver",
    "RouterServer",
    "TrajectoryGroup",
    "decode_group",
    "encode_group",
    "new_run_secret",
    "register_message",
]
