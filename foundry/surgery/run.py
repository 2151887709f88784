"""A surgery from end to end, as the CLI (`__main__.py`) and the sweep (`--heal`) run it:

    parent = load_parent("smollm2-135m")                         # or a foundry run directory
    rec = operate_and_measure(parent, "attention", "mqa", data_dir, out)   # child/ + surgery.json (before)
    rec = heal_and_measure(rec, parent, HealBudget.parse("tokens=32768"), out)   # heal/ + surgery.json (after)

The data set (data_dir, prepared with the parent's tokenizer) serves all three uses: its training split
calibrates (the first `calib_tokens`) and heals, its validation split measures (the first `heldout_tokens`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from foundry.config import ConfigError, ExperimentConfig, from_dict, write_text_atomic
from foundry.surgery.heal import HealBudget


@dataclasses.dataclass
class Parent:
    model: object                  # the GPT, float32, eval mode
    config: ExperimentConfig
    tokenizer_path: Path
    name: str                      # as given: a run directory or a zoo name (teacher / init_from accept it)


@dataclasses.dataclass
class Measure:
    """Where and how much the surgery's cost is measured."""
    window: int = 256
    calib_tokens: int = 4096
    heldout_tokens: int = 8192
    decode_tokens: int = 32
    decode_rounds: int = 3


def load_parent(spec: str, device: str = "cpu") -> Parent:
    """A foundry run (or checkpoint) directory, else a zoo name / Hugging Face directory, in float32."""
    from foundry.checkpoint import find_checkpoint, load_run

    p = Path(spec)
    if p.is_dir() and any(find_checkpoint(c) for c in (p, p / "ckpt_best", p / "ckpt_last")):
        run = load_run(p, device)
        tok = next(t for t in (run.path / "tokenizer.json", run.path.parent / "tokenizer.json") if t.is_file())
        return Parent(run.model.float(), run.config, tok, str(p))
    from foundry.zoo import load_pretrained

    pre = load_pretrained(spec, device=device, dtype="float32", quiet=True)
    args = json.loads(json.dumps(dataclasses.asdict(pre.config)))   # tuples as lists, as YAML would give them
    cfg = from_dict({"base_model": "v2", "model_args": args,
                     "out_dir": f"runs/{Path(str(spec)).name}"})
    return Parent(pre.model, cfg, Path(pre.source) / "tokenizer.json", str(spec))


def prepare_text(files: list[str], tokenizer_path: Path, out: Path) -> Path:
    """The text prepared once with the parent's tokenizer under out/data (reused when already there)."""
    from foundry.data.prepare import prepare

    for f in files:
        if not Path(f).is_file():
            raise ConfigError(f"--text {f}: no such file")
    d = out / "data"
    if not (d / "meta.json").is_file():
        prepare(files, str(tokenizer_path), d, workers=1, log=lambda *a, **k: None)
    return d


def windows(tokens, n_tokens: int, width: int):
    """(N, width) int64 windows of consecutive tokens from the start of a token array."""
    import numpy as np
    import torch

    n = min(n_tokens, len(tokens)) // width
    if n == 0:
        raise ConfigError(f"{len(tokens)} tokens are fewer than one window of {width}; give more text or a "
                          f"smaller --window")
    return torch.from_numpy(np.asarray(tokens[: n * width], dtype=np.int64)).view(n, width)


def measured_windows(parent: Parent, data_dir: Path, m: Measure):
    """(calibration (N, T), held-out (M, T + 1)) windows of the data set, checked against the parent."""
    from foundry.data.dataset import load_data

    data = load_data(data_dir)
    if data.vocab_size > parent.model.cfg.vocab_size:
        raise ConfigError(f"{data_dir}: its tokenizer has {data.vocab_size} tokens, more than the parent's "
                          f"vocabulary ({parent.model.cfg.vocab_size}); prepare it with the parent's tokenizer")
    width = m.window
    if parent.model.pos.max_positions is not None:  # a learned position table bounds the window
        width = min(width, parent.model.pos.max_positions)
    return windows(data.train, m.calib_tokens, width), windows(data.val, m.heldout_tokens, width + 1)


def operate_and_measure(parent: Parent, type_name: str, variant: str, data_dir: Path, out: Path, *,
                        measure: Measure = Measure(), overrides: dict | None = None, config_only: bool = False,
                        init: str = "transferred", seed: int = 0, depth_method: str = "bi",
                        train_block: int | None = None, say=print) -> dict:
    """The surgery, its cost before healing (printed), the child saved as out/child (a run directory) and the
    record written to out/surgery.json; returns the record (its "config" is the child's experiment).
    train_block: the healing windows (see save_run)."""
    from foundry.surgery import cost as C
    from foundry.surgery.transforms import from_scratch, operate, reinit_changed

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    calib, heldout = measured_windows(parent, data_dir, measure)
    s = operate(parent.model, parent.config, type_name, variant, calib=calib, overrides=overrides,
                config_only=config_only, parent_name=parent.name, depth_method=depth_method, seed=seed)
    if init == "random":
        s = reinit_changed(s, parent.model, parent.config, calib, seed=seed)
    elif init == "scratch":
        s = from_scratch(s, seed=seed)
    elif init != "transferred":
        raise ConfigError(f"init {init!r}: transferred, random (changed layers re-initialised) or scratch")
    prompt = heldout[0, :min(32, heldout.shape[1] // 2)].tolist() if measure.decode_tokens else None
    before = C.surgery_cost(parent.model, s.model, heldout, decode_prompt=prompt, decode_tokens=measure.decode_tokens,
                            decode_rounds=measure.decode_rounds)
    say(C.format_cost(before, f"{s.mutation} on {parent.name} ({s.method}; exact: {s.exact}), before healing:"))
    child_dir = out / "child"
    s.config = save_run(s.model, s.config, parent.tokenizer_path, child_dir, train_block=train_block)
    record = {"parent": parent.name, "mutation": s.mutation, "method": s.method, "exact": s.exact, "init": init,
              "seed": seed, "details": s.details, "before": before, "data": str(data_dir),
              "calib_tokens": int(calib.numel()), "child": str(child_dir), "seconds": time.perf_counter() - t0,
              "config": s.config}
    _write_record(out, record)
    return record


def save_run(model, cfg: ExperimentConfig, tokenizer_path: Path, run_dir: Path,
             train_block: int | None = None) -> ExperimentConfig:
    """Save a model as a run directory (ckpt_best/ + tokenizer.json) that load_run and init_from read;
    returns the config saved with it.

    train_block: the healing windows. A finetune takes its base's architecture (init_from), block_size
    included, so the model is saved with block_size = train_block when its positions are not a learned
    table (RoPE, NoPE, ALiBi: block_size then bounds nothing but the training windows)."""
    from foundry.checkpoint import save_checkpoint

    if train_block and cfg.model_args.position != "learned" and train_block < cfg.model_args.block_size:
        cfg = cfg.replace({"model_args.block_size": train_block})
    save_checkpoint(run_dir / "ckpt_best", model, {"iter": 0}, cfg.to_yaml())
    shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
    return cfg


def heal_and_measure(record: dict, parent: Parent, budget: HealBudget, out: Path, *, measure: Measure = Measure(),
                     device: str = "cpu", say=print) -> dict:
    """Heal the child of `record` (out/heal, through foundry.train), then measure KL and perplexity again on the
    same held-out windows; the record gains "after", "heal" and "recovered_share" (of the loss increase, in nats)."""
    from foundry.surgery.cost import next_token_divergence
    from foundry.surgery.heal import heal, healing_experiment, load_healed

    t0 = time.perf_counter()
    _, heldout = measured_windows(parent, Path(record["data"]), measure)
    cfg = healing_experiment(record["config"], record["child"], record["data"], budget, teacher=parent.name,
                             out_dir=out / "heal", parent=parent.name)
    summary = heal(cfg)
    healed = load_healed(out / "heal", device)
    after = next_token_divergence(parent.model, healed, heldout)
    before = record["before"]
    record.update({"after": after, "config": cfg, "heal": {**cfg.lineage["heal"], "seconds": time.perf_counter() - t0,
                   "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}},
                   "recovered_share": recovered_share(before, after)})
    say(f"after healing on {cfg.lineage['heal']['tokens']:,} tokens: KL {after['kl']:.4f}, perplexity "
        f"{after['ppl_child']:.3f} (parent {after['ppl_parent']:.3f})"
        + (f"; recovered {record['recovered_share']:.1%} of the loss increase"
           if record["recovered_share"] is not None else ""))
    _write_record(out, record)
    return record


def recovered_share(before: dict, after: dict) -> float | None:
    """The share of the surgery's held-out loss increase that healing won back, in nats per token (log
    perplexity): (ln ppl_before - ln ppl_after) / (ln ppl_before - ln ppl_parent); None if nothing was lost."""
    import math

    lost = math.log(before["ppl_child"]) - math.log(before["ppl_parent"])
    if lost <= 0:
        return None
    return (math.log(before["ppl_child"]) - math.log(after["ppl_child"])) / lost


def _write_record(out: Path, record: dict) -> None:
    cfg = record["config"]
    write_text_atomic(out / "experiment.yaml", cfg.to_yaml())
    plain = {k: v for k, v in record.items() if k != "config"}
    write_text_atomic(out / "surgery.json", json.dumps(plain, indent=1, default=str) + "\n")
