"""A fresh reward pool's start is not charged to the first reward calls: its spawned processes import the
caller's main module (an entry script imports torch: many seconds on a loaded machine), and a
reward_timeout shorter than that start used to fail every first call, then crash the caller with
the CancelledError of the calls whose futures the reset cancelled."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SLOW_MAIN = textwrap.dedent('''
    import asyncio, sys, time
    if __name__ == "__mp_main__":
        time.sleep(4.0)  # a main module slow to import, as an entry script importing torch on a busy machine
    from areal_lite.reward.math import math_reward
    from areal_lite.rollout.reward_pool import RewardPool

    async def main():
        pool = RewardPool(2, timeout=1.0)
        try:
            first = await asyncio.gather(*(pool.score(math_reward, f"#### {i}", answer=str(i)) for i in range(12)))
            second = await asyncio.gather(*(pool.score(math_reward, "#### 3", answer="4") for _ in range(4)))
        finally:
            pool.close()
        print(first, second, pool.failures)

    if __name__ == "__main__":
        asyncio.run(main())
''')


@pytest.mark.timeout(120)
def test_a_slow_start_is_not_a_reward_timeout(tmp_path):
    script = tmp_path / "slow_main.py"
    script.write_text(SLOW_MAIN)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ("[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] [0.0, 0.0, 0.0, 0.0] "
                                   "{'raised': 0, 'timeout': 0, 'invalid': 0}"), proc.stdout + proc.stderr[-2000:]
