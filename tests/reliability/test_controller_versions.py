"""The controller never hands the trainer a group with tokens from weights newer than the trainer's
(a server that restarted into weights the trainer has since given up): such a group is re-issued,
with a ledger line, exactly as a too-stale one is. Real zmq sockets on loopback."""

from __future__ import annotations

import json

import pytest

from areal_lite.control.controller import RolloutController
from areal_lite.transport import AsyncPusher, Codec
from tests.transport.test_sockets import group_for, handshake, run, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def controller(tmp_path):
    records = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(10)]
    ctl = RolloutController(records=records, batch_size=2, max_concurrent=4, max_head_offpolicyness=1,
                            codec=Codec("run1", b"k" * 32), shuffle=False, heartbeat_s=0.2, worker_timeout_s=30,
                            ledger_path=str(tmp_path / "ledger.jsonl"))
    ctl.set_version(2)  # a trainer resumed at version 2
    ctl.start()
    yield ctl
    ctl.shutdown()


def test_groups_with_tokens_newer_than_the_trainer_are_reissued(controller, tmp_path):
    ctl = controller

    async def scenario():
        dealer, items = await handshake(ctl, "worker0", want=2)
        assert [it["prompt_id"] for it in items] == ["0:0", "0:1"]
        pusher = AsyncPusher(ctl.codec, f"tcp://127.0.0.1:{ctl.ports[0]}")
        await pusher.send_group(group_for("0:0", "worker0", version=3))  # from weights v3 > trainer's v2
        await pusher.send_group(group_for("0:1", "worker0", version=2))
        return dealer, pusher

    dealer, pusher = run(scenario())
    try:
        wait_until(lambda: ctl.stats().get("rollout/accepted", 0) == 2)
        with pytest.raises(TimeoutError):  # only one usable group: no batch of two
            ctl.wait_batch(2, timeout=1)
        assert ctl.stats()["rollout/future_weights_requeued"] == 1
        assert [b.grant.prompt_id for b in ctl.buffer] == ["0:1"]

        async def regrant():  # the re-issued prompt goes out first
            await dealer.send("want", {"worker_id": "worker0", "n": 1, "seen": 2})
            msg = await dealer.recv()
            assert msg.type == "grant", msg
            return [it["prompt_id"] for it in msg.body["items"]]

        assert run(regrant()) == ["0:0"]
        events = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
        assert {"prompt_id": "0:0", "event": "requeued", "reason": "future_weights"}.items() <= events[0].items()
    finally:
        dealer.close()
        pusher.close()


def test_a_group_at_the_trainers_version_or_within_eta_is_trained(controller):
    ctl = controller

    async def scenario():
        dealer, items = await handshake(ctl, "worker0", want=2)
        pusher = AsyncPusher(ctl.codec, f"tcp://127.0.0.1:{ctl.ports[0]}")
        await pusher.send_group(group_for(items[0]["prompt_id"], "worker0", version=2))
        await pusher.send_group(group_for(items[1]["prompt_id"], "worker0", version=1))  # staleness 1 = η
        return dealer, pusher

    dealer, pusher = run(scenario())
    try:
        batch = ctl.wait_batch(2, timeout=10)
        assert sorted(b.grant.prompt_id for b in batch) == ["0:0", "0:1"]
        assert ctl.stats().get("rollout/future_weights_requeued", 0) == 0
    finally:
        dealer.close()
        pusher.close()
