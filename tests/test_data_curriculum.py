"""Curriculum sampler: what an example is, the competence schedule (easy first, all later), exact resume,
world-size invariance, and per-example loss under a reference run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundry.config import ConfigError, from_dict
from foundry.data import curriculum as cur
from foundry.data.dataset import load_data
from foundry.data.prepare import prepare

TEXT = "".join(f"Speaker {i % 5}:\n" + "word " * (1 + (i * 7) % 60) + "\n\n" for i in range(300))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cur")
    (d / "in.txt").write_text(TEXT)
    prepare([d / "in.txt"], "char", d / "ds", log=lambda *a: None, workers=1)
    return d / "ds"


def _cfg(data_dir, **data):
    return from_dict({"model_args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 30},
                      "training": {"max_iters": 100, "warmup_iters": 10, "batch_size": 4, "seed": 3},
                      "data": {"path": str(data_dir), **data}})


def test_examples_are_documents_cut_into_block_pieces(data_dir):
    d = load_data(data_dir)
    starts, lengths = cur.examples(d, 32)
    assert (np.diff(starts) > 0).all() and lengths.max() <= 32 and lengths.min() >= 2
    docs = d.doc_starts["train"]
    assert set(docs.tolist()) <= set(starts.tolist())  # every document starts an example
    # the pieces tile the stream: every token but a few lone last tokens of documents is in one example
    covered = np.zeros(len(d.train), dtype=int)
    for s, n in zip(starts, lengths):
        covered[s:s + n] += 1
    assert covered.max() == 1 and covered.sum() >= len(d.train) - len(docs)


def test_rows_train_on_one_example_only(data_dir):
    d = load_data(data_dir)
    starts, lengths = cur.examples(d, 32)
    x, y = cur.rows(d.train, starts[:3], lengths[:3], 32)
    tr = np.asarray(d.train, dtype=np.int64)
    for r in range(3):
        s, n = starts[r], lengths[r]
        assert x[r].tolist() == tr[s:s + 32].tolist()
        assert y[r, :n - 1].tolist() == tr[s + 1:s + n].tolist() and (y[r, n - 1:] == cur.IGNORE).all()


def test_embedded_data_uses_paragraphs():
    d = load_data(None)
    starts = cur.document_starts(d)
    nl = d.tokenizer.stoi["\n"]
    tr = np.asarray(d.train)
    assert starts[0] == 0 and len(starts) > 5000
    assert (tr[starts[1:] - 1] == nl).all() and (tr[starts[1:] - 2] == nl).all() and (tr[starts[1:]] != nl).all()


def test_competence_schedule():
    assert cur.competence(0) == pytest.approx(cur.C0)
    assert cur.competence(cur.RAMP) == 1.0 and cur.competence(1.0) == 1.0
    c = [cur.competence(p) for p in np.linspace(0, 1, 50)]
    assert all(a <= b for a, b in zip(c, c[1:]))


def test_length_curriculum_starts_short_and_ends_with_everything(data_dir):
    d = load_data(data_dir)
    s = cur.make_curriculum_sampler(d, _cfg(data_dir, curriculum="length"))
    _, lengths = cur.examples(d, 32)
    assert s.pool_size(0) == int(np.ceil(cur.C0 * len(lengths)))
    easy_limit = np.sort(lengths)[s.pool_size(3) - 1]        # the first batch is rows 0..3
    x, y = s.next_batch()
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    first = (y != cur.IGNORE).sum(1) + 1                     # example lengths of the first batch
    assert (first <= easy_limit).all()
    s.row = s.total_rows  # the end of the run: every example in play
    seen = [int(((y != cur.IGNORE).sum(1) + 1).max()) for x, y in (s.next_batch() for _ in range(50))]
    assert max(seen) == lengths.max()


def test_resume_is_exact(data_dir):
    d = load_data(data_dir)
    cfg = _cfg(data_dir, curriculum="length")
    a = cur.make_curriculum_sampler(d, cfg)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    want = [a.next_batch() for _ in range(3)]
    b = cur.make_curriculum_sampler(d, cfg)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(want, [b.next_batch() for _ in range(3)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="curriculum-length"):
        b.load_state_dict({"kind": "random", "row": 0})


def test_two_processes_see_the_global_batch_of_one(data_dir):
    d = load_data(data_dir)
    cfg = _cfg(data_dir, curriculum="length")
    one = cur.make_curriculum_sampler(d, cfg, 0, 1)
    ranks = [cur.make_curriculum_sampler(d, cfg, r, 2) for r in range(2)]
    for _ in range(5):
        x, _ = one.next_batch()
        parts = [s.next_batch()[0] for s in ranks]
        assert torch.equal(x, torch.cat(parts))


def test_reached_through_the_training_sampler(data_dir):
    from foundry.data.sampler import make_sampler
    s = make_sampler(load_data(data_dir), _cfg(data_dir, curriculum="length"))
    assert isinstance(s, cur.CurriculumSampler) and s.kind == "length"


def _save_reference_run(run_dir, data, block_size=32):
    """A reference 'run' (random weights; what matters is that the scores are this model's losses)."""
    from foundry.checkpoint import save_checkpoint
    from foundry.model import GPT
    cfg = from_dict({"model_args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": block_size,
                                    "vocab_size": data.vocab_size}})
    torch.manual_seed(1)
    model = GPT(cfg.model_args)
    save_checkpoint(run_dir / "ckpt_best", model, {"iter": 0}, cfg.to_yaml())
    data.tokenizer.save(run_dir / "tokenizer.json")
    return model.eval()


def test_loss_curriculum_orders_by_the_reference_models_loss(data_dir, tmp_path):
    d = load_data(data_dir)
    ref = _save_reference_run(tmp_path / "ref", d)
    s = cur.make_curriculum_sampler(d, _cfg(data_dir, curriculum="loss", curriculum_model=str(tmp_path / "ref")))
    assert s.kind == "loss" and (np.diff(s.difficulty) >= 0).all()
    # the score of an example is the reference model's mean next-token loss on it
    for k in (0, len(s.starts) // 2, len(s.starts) - 1):
        st, n = int(s.starts[k]), int(s.lengths[k])
        ids = torch.from_numpy(np.asarray(d.train[st:st + n], dtype=np.int64))[None]
        with torch.no_grad():
            logits = ref(ids[:, :-1])[0]
        want = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
        assert s.difficulty[k] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_loss_curriculum_errors(data_dir, tmp_path):
    d = load_data(data_dir)
    with pytest.raises(ConfigError, match="curriculum_model"):
        cur.make_curriculum_sampler(d, _cfg(data_dir, curriculum="loss"))
    other = load_data(None)  # a different character vocabulary
    _save_reference_run(tmp_path / "other", other)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        cur.make_curriculum_sampler(d, _cfg(data_dir, curriculum="loss", curriculum_model=str(tmp_path / "other")))
