"""Training samplers: window contents, determinism, exact state round trip, sharding invariance."""
import numpy as np
import pytest
import torch

from foundry.config import ConfigError, ExperimentConfig
from foundry.data.dataset import TokenData, eval_batches, eval_windows
from foundry.data.sampler import RandomWindows, SequentialWindows, make_sampler, split_batch
from foundry.data.tokenize import CharTokenizer

TOKENS = (np.arange(5000) * 7 % 251).astype(np.uint16)  # a stream where every window is recognisable


def batches(s, n):
    return [s.next_batch() for _ in range(n)]


@pytest.mark.parametrize("cls", [RandomWindows, SequentialWindows])
def test_windows_are_slices_of_the_stream_with_shifted_targets(cls):
    s = cls(TOKENS, 4, 16, seed=3)
    for x, y in batches(s, 5):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            start = np.flatnonzero(TOKENS[: len(TOKENS) - 16] == row_x[0].item())
            assert any(np.array_equal(TOKENS[i:i + 16], row_x.numpy()) and np.array_equal(TOKENS[i + 1:i + 17], row_y.numpy())
                       for i in start)


def test_sequential_order_walks_the_file_and_wraps():
    s = SequentialWindows(TOKENS, 3, 100, seed=0)
    n_windows = (len(TOKENS) - 1) // 100                      # 49: the 20 batches below wrap once
    rows = torch.cat([s.next_batch()[0] for _ in range(20)])
    for g, row in enumerate(rows):
        start = (g % n_windows) * 100
        assert np.array_equal(row.numpy(), TOKENS[start:start + 100])


def test_random_is_deterministic_by_seed_and_covers_the_split():
    a = torch.cat([x for x, _ in batches(RandomWindows(TOKENS, 8, 16, seed=1), 50)])
    b = torch.cat([x for x, _ in batches(RandomWindows(TOKENS, 8, 16, seed=1), 50)])
    c = torch.cat([x for x, _ in batches(RandomWindows(TOKENS, 8, 16, seed=2), 50)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    firsts = RandomWindows(TOKENS, 400, 16, seed=1).starts(np.arange(400, dtype=np.uint64))
    assert firsts.min() >= 0 and firsts.max() <= len(TOKENS) - 17
    assert firsts.min() < 500 and firsts.max() > len(TOKENS) - 600   # spread over the whole split


@pytest.mark.parametrize("cls", [RandomWindows, SequentialWindows])
def test_state_round_trip_continues_exactly(cls):
    s = cls(TOKENS, 4, 16, seed=5)
    batches(s, 7)
    state = s.state_dict()
    expected = batches(s, 3)
    t = cls(TOKENS, 4, 16, seed=5)
    t.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, batches(t, 3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="order"):
        (SequentialWindows if cls is RandomWindows else RandomWindows)(TOKENS, 4, 16).load_state_dict(state)


@pytest.mark.parametrize("cls", [RandomWindows, SequentialWindows])
def test_ranks_partition_the_single_process_stream(cls):
    """Two ranks with half the micro-batch see, between them, exactly the rows one process sees."""
    single = torch.cat([x for x, _ in batches(cls(TOKENS, 4, 16, seed=9), 6)])
    r0 = batches(cls(TOKENS, 2, 16, seed=9, rank=0, world_size=2), 6)
    r1 = batches(cls(TOKENS, 2, 16, seed=9, rank=1, world_size=2), 6)
    both = torch.cat([torch.cat([a[0], b[0]]) for a, b in zip(r0, r1)])
    assert torch.equal(single, both)


def test_split_batch_keeps_the_global_batch():
    tc = ExperimentConfig().training
    assert split_batch(tc.__class__(batch_size=12, gradient_accumulation_steps=4), 2) == (12, 2)  # nanoGPT: accum
    assert split_batch(tc.__class__(batch_size=12, gradient_accumulation_steps=1), 2) == (6, 1)   # else batch
    with pytest.raises(ConfigError, match="multiple of 2"):
        split_batch(tc.__class__(batch_size=3, gradient_accumulation_steps=1), 2)


def test_make_sampler_follows_config_and_curriculum_needs_its_module(monkeypatch):
    tok = CharTokenizer([chr(65 + i) for i in range(26)])
    data = TokenData(TOKENS % 26, TOKENS[:500] % 26, tok, "test", "")
    cfg = ExperimentConfig().replace({"model_args.block_size": 16, "training.batch_size": 4,
                                      "data.order": "sequential"})
    assert isinstance(make_sampler(data, cfg), SequentialWindows)
    assert isinstance(make_sampler(data, cfg.replace({"data.order": "random"})), RandomWindows)
    import sys
    monkeypatch.setitem(sys.modules, "foundry.data.curriculum", None)  # as if the module were absent
    with pytest.raises(ConfigError, match="data.curriculum"):
        make_sampler(data, cfg.replace({"data.curriculum": "length"}))


def test_too_short_split_is_refused_clearly():
    with pytest.raises(ValueError, match="too short for block_size"):
        RandomWindows(TOKENS[:10], 2, 16)


def test_eval_batches_are_the_eval_windows_stacked():
    single = [x for x, _ in eval_windows(TOKENS, 32, 10)]
    stacked = [x for x, _ in eval_batches(TOKENS, 32, 10, 4)]
    assert [len(b) for b in stacked] == [4, 4, 2]
    assert torch.equal(torch.cat(single), torch.cat(stacked))
    ys = torch.cat([y for _, y in eval_batches(TOKENS, 32, 10, 4)])
    assert torch.equal(ys[:, :-1], torch.cat(stacked)[:, 1:])
