"""The admission rule and the dataset cursor, pinned with concrete values."""

from __future__ import annotations

import pytest

from areal_lite.control.prompts import PromptSource, parse_prompt_id
from areal_lite.control.staleness import StalenessManager


def test_capacity_concurrency_bound():
    # C = 10, B = 4, η = 2, 3 running → min(10 − 3, (2 + 0 + 1)·4 − 3) = min(7, 9) = 7
    m = StalenessManager(batch_size=4, max_concurrent=10, max_head_offpolicyness=2, running=3)
    assert m.capacity(version=0) == 7


def test_capacity_staleness_bound_by_version():
    m = StalenessManager(batch_size=4, max_concurrent=10, max_head_offpolicyness=2)
    assert m.capacity(version=0) == 10  # min(10, 12)
    m = StalenessManager(batch_size=4, max_concurrent=100, max_head_offpolicyness=2)
    assert m.capacity(version=0) == 12  # (2 + 0 + 1)·4
    assert m.capacity(version=5) == 32  # (2 + 5 + 1)·4
    m = StalenessManager(batch_size=4, max_concurrent=10, max_head_offpolicyness=2)
    assert m.capacity(version=5) == 10  # min(10, 32)


def test_capacity_counts_accepted_and_running():
    # AReaL's TC20: η=2, v=3, B=8, accepted=40, running=5, C=64 → min(59, 48 − 45) = 3
    m = StalenessManager(batch_size=8, max_concurrent=64, max_head_offpolicyness=2, running=5, accepted=40)
    assert m.capacity(version=3) == 3
    m = StalenessManager(batch_size=4, max_concurrent=10, max_head_offpolicyness=2)
    for _ in range(5):
        m.on_grant()
        m.on_accept()
    assert (m.running, m.accepted) == (0, 5)
    assert m.capacity(version=0) == 7  # 12 − 5


def test_synchronous_mode_admits_exactly_one_batch_per_version():
    m = StalenessManager(batch_size=4, max_concurrent=64, max_head_offpolicyness=0)
    assert m.capacity(0) == 4
    m.on_grant(4)
    assert m.capacity(0) == 0
    for _ in range(4):
        m.on_accept()
    assert m.capacity(0) == 0  # nothing more until the version advances
    assert m.capacity(1) == 4


def test_release_frees_capacity_without_counting_as_accepted():
    m = StalenessManager(batch_size=2, max_concurrent=8, max_head_offpolicyness=0)
    m.on_grant(2)
    m.on_release()  # rejected or filtered
    assert (m.running, m.accepted, m.capacity(0)) == (1, 0, 1)


def test_restored_version_keeps_the_bound():
    # Trained 5 steps of B = 4 (20 accepted) and 3 groups buffered: accepted = 23 in the checkpoint.
    m = StalenessManager(batch_size=4, max_concurrent=100, max_head_offpolicyness=2, running=7, accepted=23)
    state = m.state_dict()
    restored = StalenessManager(batch_size=4, max_concurrent=100, max_head_offpolicyness=2)
    restored.load_state_dict(state)
    assert restored.running == 0  # in-flight work is re-issued, not counted
    assert restored.accepted == 23
    assert restored.capacity(version=5) == (2 + 5 + 1) * 4 - 23 == 9
    # Not the burst of (η + v + 1)·B = 32 a reset counter would allow (AReaL's pre-2026 behaviour).
    assert restored.capacity(version=5) < StalenessManager(4, 100, 2).capacity(version=5)


def test_unaccept_and_release_guard_underflow():
    m = StalenessManager(batch_size=2, max_concurrent=8, max_head_offpolicyness=1)
    with pytest.raises(AssertionError):
        m.on_release()
    with pytest.raises(AssertionError):
        m.on_unaccept()


def test_prompt_source_visits_each_prompt_once_per_epoch():
    src = PromptSource(5, seed=3, shuffle=True, num_epochs=2)
    ids = []
    while (pid := src.next_id()) is not None:
        ids.append(pid)
    assert len(ids) == 10 and len(set(ids)) == 10
    for epoch in (0, 1):
        assert sorted(parse_prompt_id(p)[1] for p in ids if parse_prompt_id(p)[0] == epoch) == list(range(5))
    assert src.exhausted


def test_prompt_source_requeue_goes_first_in_order_and_state_round_trips():
    src = PromptSource(6, seed=0, shuffle=True, num_epochs=1)
    first = [src.next_id() for _ in range(3)]
    src.requeue(first[1:])
    state = src.state_dict()
    rest = [src.next_id() for _ in range(5)]
    assert rest[:2] == first[1:]
    clone = PromptSource(6, seed=0, shuffle=True, num_epochs=1)
    clone.load_state_dict(state)
    assert [clone.next_id() for _ in range(5)] == rest
    assert src.next_id() is None and clone.next_id() is None


def test_prompt_source_order_is_seeded():
    a = PromptSource(50, seed=1, shuffle=True, num_epochs=1)
    b = PromptSource(50, seed=1, shuffle=True, num_epochs=1)
    c = PromptSource(50, seed=2, shuffle=True, num_epochs=1)
    seq = lambda s: [s.next_id() for _ in range(50)]  # noqa: E731
    sa, sb, sc = seq(a), seq(b), seq(c)
    assert sa == sb and sa != sc
