"""The one owner of the files in a run directory (`out_dir`); rank 0 alone writes.

    config.yaml      the fully resolved experiment (loads back to an equal config)
    tokenizer.json   the data's tokenizer, so the run directory is self-contained
    metrics.jsonl    one JSON object per line (training, evaluation and event lines)
    ckpt_last/       weights (safetensors) + optimiser, RNG and data-position state, written atomically
    ckpt_best/       the checkpoint with the lowest validation loss
    sample.txt       text generated at the end
    summary.json     final numbers

Torch-free at import (foundry.train must refuse a bad experiment before torch loads); checkpoint I/O is
imported where it is used.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from foundry.config import ExperimentConfig, from_dict, write_text_atomic
from foundry.safeio import LineLog, read_metrics


class MetricsLog:
    """Append-only JSONL, one whole line per write (a line a full disk cannot take is cut back off, and
    DiskFullError names the file); `sync()` (called at each checkpoint) fsyncs it, so what a checkpoint
    covers is on disk, and a kill loses at most lines after it, which a resumed run rewrites."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self._f = LineLog(path) if enabled else None

    def write(self, **row) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")

    def sync(self) -> None:
        if self._f is not None:
            self._f.sync()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def truncate_metrics(path: Path, last_iter: int) -> None:
    """Keep the rows up to `last_iter` (a resumed run rewrites what came after its checkpoint)."""
    rows = [r for r in read_metrics(path) if r.get("iter", 0) <= last_iter]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


# Keys that may differ when a run is continued: its length (extending a run, successive halving) and how
# it is executed or reported, none of which changes the weights it computes on the same device.
RESUMABLE_CHANGES = {"training.max_iters", "training.device", "training.num_threads", "training.compile",
                     "training.cpu_malloc_tuning",
                     "training.log_interval", "training.sample_tokens", "training.sample_prompt", "eval.tasks",
                     "eval.limit", "eval.num_fewshot", "out_dir", "lineage"}


def config_diff(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("extra", "lineage"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    fa, fb = dict(flat(a.to_dict())), dict(flat(b.to_dict()))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


class RunDir:
    """Everything written to or read from `out_dir`. `main` is False on torchrun ranks other than 0, whose
    writes are no-ops (reads, such as finding the previous checkpoint, happen on every rank)."""

    def __init__(self, path: str | os.PathLike, main: bool = True):
        self.path, self.main = Path(path), main
        self.last, self.best = self.path / "ckpt_last", self.path / "ckpt_best"

    # ---- the previous run, if any ---------------------------------------------------------------
    def previous(self, cfg: ExperimentConfig):
        """(checkpoint dir, state dict) of a run of the same experiment here, or (None, None): the newest
        intact checkpoint (checkpoint.resume_checkpoint names and sets aside damaged ones, or raises
        CheckpointError when none is intact). A run of another experiment (beyond RESUMABLE_CHANGES) is
        refused: FileExistsError."""
        import yaml

        from foundry.checkpoint import load_state, resume_checkpoint

        # damage is reported on stderr even under --quiet: the run continues from an earlier point
        warn = (lambda m: print(m, file=sys.stderr, flush=True)) if self.main else (lambda m: None)
        ckpt = resume_checkpoint(self.path, say=warn, move_aside=self.main)
        if ckpt is None:
            return None, None
        stored = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
        changed = [k for k in config_diff(stored, cfg) if k not in RESUMABLE_CHANGES]
        if changed:
            raise FileExistsError(f"{self.path} holds a run of a different experiment ({', '.join(changed[:6])} "
                                  f"differ from the stored config); choose another out_dir or delete that run")
        return ckpt, load_state(ckpt)

    # ---- starting and continuing ---------------------------------------------------------------
    def start(self, cfg: ExperimentConfig, tokenizer) -> None:
        """A new run: clear what a previous, checkpoint-less attempt left, record the config and tokenizer."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "summary.json", "sample.txt"):
            (self.path / stale).unlink(missing_ok=True)
        shutil.rmtree(self.best, ignore_errors=True)
        write_text_atomic(self.path / "config.yaml", cfg.to_yaml())
        tokenizer.save(self.path / "tokenizer.json")  # a run directory is self-contained for eval and sampling

    def resume(self, cfg: ExperimentConfig, at_iter: int, tokenizer=None) -> None:
        """A continued run: metric lines after the checkpoint are rewritten; an extended run records its
        new max_iters; a tokenizer.json lost since is written again."""
        if not self.main:
            return
        truncate_metrics(self.path / "metrics.jsonl", at_iter)
        write_text_atomic(self.path / "config.yaml", cfg.to_yaml())
        if tokenizer is not None and not (self.path / "tokenizer.json").is_file():
            tokenizer.save(self.path / "tokenizer.json")

    def metrics(self) -> MetricsLog:
        return MetricsLog(self.path / "metrics.jsonl", enabled=self.main)

    # ---- checkpoints and final files ------------------------------------------------------------
    def save_checkpoint(self, model, state: dict, config_yaml: str, weights=None, is_best: bool = False) -> None:
        """ckpt_last, atomically; a copy to ckpt_best (also swapped in atomically) when it is the best."""
        if not self.main:
            return
        from foundry.checkpoint import copy_checkpoint, save_checkpoint

        save_checkpoint(self.last, model, state, config_yaml, weights=weights)  # earlier ones rotate to .prevN
        if is_best:
            copy_checkpoint(self.last, self.best)

    def write_sample(self, text: str) -> None:
        if self.main:
            write_text_atomic(self.path / "sample.txt", text)

    def write_summary(self, summary: dict) -> None:
        if self.main:
            write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2))
