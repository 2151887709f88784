"""Checkpoints: safetensors weights plus a torch file of optimiser, RNG and data-position state, and a
manifest that lets a reader tell an intact checkpoint from a damaged one.

    ckpt_last/ {model.safetensors, state.pt, config.yaml, manifest.json}

A checkpoint is written inside a temporary directory and renamed into place, so a crash or a kill never
leaves half of one. `manifest.json` (written last, inside the same directory) holds the iteration and each
file's size and sha256: damage from outside (a partial copy, a bad disk, an edit) is found by
`verify_checkpoint` before anything is loaded. The previous `ckpt_last` is kept as `ckpt_last.prev1` (up
to KEEP_PREVIOUS of them), so damage to the newest checkpoint costs one evaluation interval, not the run.

On resume `resume_checkpoint(run_dir)` picks the newest intact checkpoint among ckpt_last, its earlier
copies and ckpt_best, names every damaged one (and moves it aside as `NAME.damaged`), or raises
CheckpointError saying how to start again when none is intact. A full disk (or a file-size limit) while
writing raises safeio.DiskFullError naming the space needed; the previous checkpoints are untouched.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from foundry.safeio import DamagedFileError, check_free_space, fmt_bytes, fsync_dir, guard_disk_full, write_file

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "state.pt", "config.yaml")
# Earlier ckpt_last directories kept beside it (ckpt_last.prev1 is the newest). One costs a checkpoint's size
# on disk and saves a run whose newest checkpoint was damaged from all but one evaluation interval.
KEEP_PREVIOUS = 1


class CheckpointError(DamagedFileError):
    """A checkpoint (or every checkpoint of a run) that cannot be used; the message says which file is wrong
    and what to do."""


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied weights stored once (safetensors refuses shared storage)."""
    state, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if key in seen and t.data_ptr() != 0:
            continue
        seen[key] = name
        state[name] = t.detach().contiguous().cpu()
    return state


def aliased_names(model: nn.Module) -> set[str]:
    """Names under which an already-listed parameter appears again (tied weights: lm_head.weight)."""
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def previous_dirs(path: Path, keep: int = KEEP_PREVIOUS) -> list[Path]:
    """ckpt_last.prev1 .. ckpt_last.prevN, newest first."""
    return [path.with_name(f"{path.name}.prev{k}") for k in range(1, keep + 1)]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: nn.Module, state: dict, config_yaml: str,
                    weights: dict[str, torch.Tensor] | None = None, keep_previous: int = KEEP_PREVIOUS) -> None:
    """Write a checkpoint directory atomically, with its manifest; the one it replaces becomes
    `NAME.prev1` (the oldest beyond `keep_previous` is dropped). `weights` (a full state dict, e.g. gathered
    from FSDP shards) replaces model.state_dict(); tied weights are stored once either way.

    The exact size is known before anything is written (the safetensors header is laid out first, state.pt
    is serialised in memory), so a disk without that much room is refused up front, and any write that still
    fails leaves the previous checkpoints as they were (DiskFullError names the path and the size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights is None:
        tensors = model_state(model)
    else:
        drop = aliased_names(model)
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items() if k not in drop}
    header, data_bytes = _safetensors_header(tensors)
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory: torch's zip writer turns a failed write into an errno-less RuntimeError
    blobs = {"state.pt": buf.getbuffer(), "config.yaml": config_yaml.encode("utf-8")}
    needed = len(header) + data_bytes + sum(len(b) for b in blobs.values())
    kept = (f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was written")
    check_free_space(path, needed, kept)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    try:
        with guard_disk_full(path, needed, kept):
            files = {"model.safetensors": _write_safetensors(tmp / "model.safetensors", header, tensors)}
            for name, data in blobs.items():
                write_file(tmp / name, data)
                files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            manifest = {"format": 1, "iter": state.get("iter"), "files": files}
            write_file(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())  # last: the rest is written
            fsync_dir(tmp)
        _swap_in(tmp, path, keep_previous)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# safetensors dtype names (the format's spec: huggingface/safetensors, "Format")
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def _safetensors_header(tensors: dict[str, torch.Tensor]) -> tuple[bytes, int]:
    """(8-byte little-endian length + JSON header, padded with spaces to 8 bytes; bytes of tensor data). Each
    tensor's data_offsets index the data that follows the header, in dict order, with no gaps."""
    entries, offset = {}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def _write_safetensors(path: Path, header: bytes, tensors: dict[str, torch.Tensor]) -> dict:
    """Stream the weights to `path` tensor by tensor, hashing on the way (one pass over the bytes, no second
    copy of the model in memory: `safetensors.torch.save` builds one and took 3x save_file's time here)."""
    h, n = hashlib.sha256(header), len(header)
    with open(path, "wb") as f:
        f.write(header)
        for t in tensors.values():
            if t.numel():
                raw = memoryview(t.reshape(-1).view(torch.uint8).numpy())  # (nbytes,) view of the same memory
                h.update(raw)
                f.write(raw)
                n += len(raw)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": n, "sha256": h.hexdigest()}


def _swap_in(tmp: Path, path: Path, keep: int) -> None:
    """Rename `tmp` to `path`, shifting the current one into the .prevN rotation. At every moment between
    two renames an intact checkpoint exists under one of the names resume_checkpoint looks at."""
    prev = previous_dirs(path, keep)
    if path.exists():
        if prev:
            if prev[-1].exists():
                shutil.rmtree(prev[-1])
            for older, newer in zip(reversed(prev[1:]), reversed(prev[:-1])):
                if newer.exists():
                    os.replace(newer, older)
            os.replace(path, prev[0])
        else:
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(path.with_name(path.name + ".old"), ignore_errors=True)
    fsync_dir(path.parent)


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint directory (ckpt_last -> ckpt_best) and swap it in atomically; on a full disk the
    previous `dst` is unchanged."""
    src, dst = Path(src), Path(dst)
    needed = sum(f.stat().st_size for f in src.iterdir() if f.is_file())
    kept = f"{src.name} is saved; the previous {dst.name} is unchanged"
    check_free_space(dst, needed, kept)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=dst.name + ".tmp"))
    old = dst.with_name(dst.name + ".old")
    try:
        with guard_disk_full(dst, needed, kept):
            for f in sorted(src.iterdir(), key=lambda f: f.name == MANIFEST):  # the manifest last
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
                    with open(tmp / f.name, "rb") as fh:
                        os.fsync(fh.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(dst.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    path: Path
    iter: int | None         # the iteration it was taken at (None when unreadable)
    problem: str | None      # what is wrong with it; None when intact

    @property
    def intact(self) -> bool:
        return self.problem is None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Check a checkpoint directory against its manifest (sizes, then sha256 of every file) without
    loading it. A checkpoint from before manifests is checked by structure: the safetensors header against
    the file's size, the CRC of every member of state.pt."""
    path = Path(path)
    if not path.is_dir():
        return CheckpointInfo(path, None, "missing")
    man = path / MANIFEST
    if not man.is_file():
        return _inspect_legacy(path)
    try:
        m = json.loads(man.read_text())
        files, it = m["files"], m.get("iter")
        ok = isinstance(files, dict) and (it is None or isinstance(it, int)) and all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            and "/" not in k and k not in ("", ".", "..") for k, v in files.items())  # names inside the dir only
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        return CheckpointInfo(path, None, f"{MANIFEST} is damaged (not the JSON foundry writes)")
    for name in FILES:
        if name not in files:
            return CheckpointInfo(path, it, f"{MANIFEST} does not list {name}")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return CheckpointInfo(path, it, f"{name} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            return CheckpointInfo(path, it, f"{name} is {fmt_bytes(size)}, its manifest says "
                                            f"{fmt_bytes(want['bytes'])} (truncated or partly copied)")
    for name, want in files.items():
        h = hashlib.sha256()
        with open(path / name, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        if h.hexdigest() != want["sha256"]:
            return CheckpointInfo(path, it, f"{name} does not match its checksum in {MANIFEST} "
                                            f"(its bytes were changed)")
    return CheckpointInfo(path, it, None)


def _inspect_legacy(path: Path) -> CheckpointInfo:
    for name in FILES:
        if not (path / name).is_file():
            return CheckpointInfo(path, None, f"{name} is missing (and there is no {MANIFEST})")
    st = path / "model.safetensors"
    size = st.stat().st_size
    try:
        with open(st, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n)) if 8 + n <= size else None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError
    except (struct.error, ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return CheckpointInfo(path, None, "model.safetensors is damaged (its header does not match its size)")
    try:
        with zipfile.ZipFile(path / "state.pt") as z:
            if z.testzip() is not None:
                raise zipfile.BadZipFile
        it = load_state(path).get("iter")
    except Exception:  # noqa: BLE001 - zipfile raises BadZipFile, UnicodeDecodeError, struct.error... on garbage
        return CheckpointInfo(path, None, "state.pt is damaged (not a zip whose members pass their CRC)")
    import yaml

    try:
        if not isinstance(yaml.safe_load((path / "config.yaml").read_text()), dict):
            raise ValueError
    except (yaml.YAMLError, ValueError, UnicodeDecodeError):
        return CheckpointInfo(path, it, "config.yaml is damaged (not the YAML mapping foundry writes)")
    return CheckpointInfo(path, it, None)


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """What is wrong with the checkpoint at `path`, or None when it is intact."""
    return inspect_checkpoint(path).problem


def resume_checkpoint(run_dir: str | os.PathLike, say=print, move_aside: bool = True) -> Path | None:
    """The newest intact checkpoint of the run in `run_dir` (None when it has none at all).

    Looked at: ckpt_last, its earlier copies (ckpt_last.prevN, a crash's ckpt_last.old) and ckpt_best;
    the highest iteration wins, ckpt_last on a tie. Each damaged one is named with what is wrong and moved
    aside to NAME.damaged (so it is never rotated in as a "previous" checkpoint, and stays for inspection;
    `move_aside=False` on torchrun ranks other than 0, which only read).
    When checkpoints exist but none is intact: CheckpointError, with how to start again."""
    run_dir = Path(run_dir)
    last = run_dir / "ckpt_last"
    for stale in run_dir.glob("ckpt_*.tmp*") if move_aside else ():  # a write a kill interrupted: never a checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    prev = sorted((p for p in run_dir.glob("ckpt_last.prev*") if re.fullmatch(r"ckpt_last\.prev\d+", p.name)),
                  key=lambda p: int(p.name[len("ckpt_last.prev"):]))
    names = [last, *prev, last.with_name("ckpt_last.old"), run_dir / "ckpt_best"]
    found = [inspect_checkpoint(p) for p in names if p.is_dir()]
    if not found:
        return None
    intact = [c for c in found if c.intact]
    damaged = [c for c in found if not c.intact]
    if not intact:
        listing = "; ".join(f"{c.path.name}: {c.problem}" for c in damaged)
        err = CheckpointError(
            f"{run_dir}: no intact checkpoint to continue from ({listing}). To train this run again from the "
            f"start, move the run aside (`mv {run_dir} {run_dir}.damaged`) and run the same command again")
        err.restart_hint = True
        raise err
    pick = max(intact, key=lambda c: (c.iter if c.iter is not None else -1, -found.index(c)))
    for c in damaged:
        aside = c.path.with_name(c.path.name + ".damaged")
        if move_aside:
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(c.path, aside)
        say(f"warning: {c.path}: {c.problem}; moved aside to {aside.name}")
    if damaged or pick.path != last:
        say(f"continuing from {pick.path} (iteration {pick.iter}), the newest intact checkpoint")
    return pick.path


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory at `path` (or the `.old` copy a crash mid-rename left behind)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if (p / "model.safetensors").is_file() and (p / "state.pt").is_file():
            return p
    return None


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load model.safetensors from a checkpoint directory (tied weights restored by the tie itself)."""
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f} is missing; the checkpoint is incomplete")
    try:
        state = load_file(str(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged header
        raise CheckpointError(f"{f}: damaged ({e}); use another checkpoint of the run, or re-train") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n in missing if n == "lm_head.weight" and getattr(model, "cfg", None) is not None
            and model.cfg.tie_embeddings}
    missing = [m for m in missing if m not in tied]
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load_state(path: str | os.PathLike) -> dict:
    f = Path(path) / "state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing; the checkpoint is incomplete") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError / UnpicklingError / EOFError for damage
        raise CheckpointError(f"{f}: damaged ({type(e).__name__}: {e}); use another checkpoint of the run, "
                              f"or re-train") from None


class LoadedRun:
    """A trained model with its tokenizer and config, as `load_run` returns it."""

    def __init__(self, model, tokenizer, config, path: Path):
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "best") -> LoadedRun:
    """Load a run directory (its ckpt_best, else ckpt_last) or a checkpoint directory, ready for eval.

    The checkpoint is verified first: a damaged or incomplete one raises CheckpointError naming the file and
    the run's intact checkpoints, if any. The tokenizer is the run's tokenizer.json (written at the start of
    every run)."""
    import yaml

    from foundry.config import from_dict
    from foundry.data.tokenize import load_tokenizer
    from foundry.model import GPT

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run or checkpoint directory")
    cands = [path / f"ckpt_{which}", path / "ckpt_last", path / "ckpt_best", path]
    # the first that holds any checkpoint file (a damaged one is reported, not skipped), else a crash's .old
    ckpt = next((c for c in cands if any((c / n).is_file() for n in (*FILES, MANIFEST))), None) \
        or next((find_checkpoint(c) for c in cands if find_checkpoint(c) is not None), None)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no checkpoint (model.safetensors + state.pt) in it or in its "
                                f"ckpt_best/ or ckpt_last/")
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        run_dir = ckpt.parent if ckpt != path or ckpt.name.startswith("ckpt_") else path
        others = [c.path for c in (inspect_checkpoint(d) for d in sorted(run_dir.glob("ckpt_*"))
                                   if d != ckpt and d.is_dir() and ".tmp" not in d.name) if c.intact]
        hint = (f"load an intact one instead ({', '.join(str(o) for o in others)})" if others else
                "re-train the run (the same training command continues from its newest intact checkpoint)")
        raise CheckpointError(f"{ckpt}: {problem}; {hint}")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    if cfg.lora.rank > 0:  # an adapter-only LoRA checkpoint: its base (init_from) + the adapters, merged
        from foundry.trainer.objectives import load_finetuned

        model = load_finetuned(cfg, ckpt)
    else:
        model = GPT(cfg.model_args)
        load_weights(model, ckpt)
    model.to(device).eval()
    tok_path = next((p for p in (ckpt / "tokenizer.json", ckpt.parent / "tokenizer.json") if p.is_file()), None)
    if tok_path is None:
        source = f"{cfg.data.path}/tokenizer.json" if cfg.data.path else "the embedded data set's"
        raise FileNotFoundError(
            f"{ckpt.parent / 'tokenizer.json'} is missing (the run's tokenizer, needed to read and write text); "
            f"re-run the run's training command (it continues the run and writes the tokenizer again), or copy "
            f"{source} there")
    return LoadedRun(model, load_tokenizer(tok_path), cfg, ckpt)
