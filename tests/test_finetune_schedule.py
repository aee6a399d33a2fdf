"""The finetuning ramp and balancer arithmetic (appendix F.3)."""

import pytest

from model.finetune_schedule import Balancer, batch_split, chunk_end, online_share


def test_ramp_goes_linearly_from_start_to_end_then_stays():
    assert online_share(0, 0.01, 0.5, 1000) == pytest.approx(0.01)
    assert online_share(500, 0.01, 0.5, 1000) == pytest.approx(0.255)
    assert online_share(1000, 0.01, 0.5, 1000) == pytest.approx(0.5)
    assert online_share(10**6, 0.01, 0.5, 1000) == pytest.approx(0.5)
    shares = [online_share(s, 0.01, 0.5, 100) for s in range(0, 101, 10)]
    assert shares == sorted(shares)
    with pytest.raises(ValueError):
        online_share(0, -0.1, 0.5, 10)


def test_batch_split_keeps_both_sources():
    assert batch_split(32, 0.01) == (31, 1)        # 0.32 would round to 0
    assert batch_split(32, 0.5) == (16, 16)
    assert batch_split(32, 0.0) == (32, 0)
    assert batch_split(32, 1.0) == (0, 32)
    assert sum(batch_split(64, 0.37)) == 64


def test_balancer_holds_steps_per_transition():
    b = Balancer(ratio=6)
    assert b.steps_for_round(100, 0) == 600
    assert b.steps_for_round(150, 600) == 300      # 50 new transitions pay for 300 steps
    assert b.steps_for_round(150, 900) == 0        # nothing new collected: nothing to train
    assert b.steps_for_round(150, 1000) == 0       # already ahead: never negative
    assert b.achieved(150, 900) == 6
    with pytest.raises(ValueError):
        Balancer(ratio=0)


def test_chunks_are_short_on_the_ramp_and_one_past_it():
    # Ramp of 250 steps in chunks of 100; a round from step 0 to 1000.
    ends, step = [], 0
    while step < 1000:
        step = chunk_end(step, 1000, ramp_steps=250, chunk=100)
        ends.append(step)
    assert ends == [100, 200, 250, 1000]
    assert chunk_end(40, 90, ramp_steps=250, chunk=100) == 90     # the round ends first
    assert chunk_end(600, 900, ramp_steps=250, chunk=100) == 900   # a later round, past the ramp
    with pytest.raises(ValueError, match="chunk"):
        chunk_end(0, 10, ramp_steps=5, chunk=0)
