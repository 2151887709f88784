"""Loading a local Hugging Face checkpoint into a foundry GPT: lazily, in the checkpoint's dtype.

    p = load_pretrained("llama3-1b", device="cuda")        # or a directory, or an org/name in the HF cache
    p.model, p.config, p.tokenizer, p.chat_template, p.stop_ids

The model is built on the meta device (no memory, no initialisation), then every parameter is assigned a
tensor read from the memory-mapped safetensors files (q/k/v and gate/up concatenated, GPT-2's Conv1D
transposed): one copy of the weights, never a random one beside it.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundry.config import ConfigError, ModelConfig, from_dict
from foundry.zoo.architectures import Architecture, ZooError, architecture_of
from foundry.zoo.catalog import NAMED, find, named_model_args, read_hf_config
from foundry.zoo.convert import canonical_names, combine, import_plan

PROGRESS_MIN_BYTES = 1 << 30  # loads of at least this much show a progress bar


@dataclass
class Pretrained:
    """A loaded checkpoint: the model (eval mode) and what decoding with it needs."""
    model: torch.nn.Module
    config: ModelConfig
    tokenizer: object
    chat_template: str | None
    stop_ids: list[int]
    source: Path
    hf_config: dict = field(repr=False)
    architecture: str = ""
    dtype: torch.dtype = torch.float32


def model_config(hf_config: dict, where: str) -> tuple[Architecture, ModelConfig]:
    """The architecture a config.json names and the foundry ModelConfig it translates to (validated)."""
    arch = architecture_of(hf_config, where)
    try:
        cfg = from_dict({"base_model": "v1", "model_args": arch.from_hf(hf_config)}).model_args
    except ConfigError as e:
        raise ZooError(f"{where}: the {arch.name} config translates to an invalid foundry config: {e}") from None
    return arch, cfg


def build_meta(cfg: ModelConfig, **kw):
    """A GPT of `cfg` on the meta device: shapes only, no memory, nothing initialised."""
    from foundry.model import GPT

    with torch.device("meta"):
        return GPT(cfg, **kw)


def count_parameters(name: str) -> int:
    """Parameters of a named config (tied weights once), from a meta-device model: nothing is allocated."""
    _, cfg = model_config(NAMED[name].hf_config, name)
    return sum(p.numel() for p in build_meta(cfg).parameters())


# --------------------------------------------------------------------------------------------------
# Reading the weights
# --------------------------------------------------------------------------------------------------
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those model.safetensors.index.json names, else every one."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ZooError(f"{index}: not a safetensors index (needs a weight_map): {e}") from None
        absent = [f for f in files if not (d / f).is_file()]
        if absent:
            raise ZooError(f"{index} names shard(s) that are missing: {absent}")
        return [d / f for f in files]
    return sorted(d.glob("*.safetensors"))


def fill_from_checkpoint(model, cfg: ModelConfig, d: Path, arch: Architecture, device="cpu", dtype=None,
                         progress: bool | None = None) -> torch.dtype:
    """Assign every parameter of a meta-device `model` from the safetensors files of checkpoint directory `d`
    (memory-mapped; read straight onto `device`); returns the dtype used (`dtype`, else the checkpoint's)."""
    from safetensors import safe_open

    device = torch.device(device)
    handles = {f: safe_open(str(f), framework="pt", device=str(device) if device.type != "cpu" else "cpu")
               for f in weight_files(d)}
    where = {k: h for h in handles.values() for k in h.keys()}
    first = next(iter(where), None)
    stored = _DTYPES.get(where[first].get_slice(first).get_dtype()) if first else None
    total = sum(_numel(h.get_slice(k).get_shape()) for k, h in where.items())
    show = progress if progress is not None else total * (dtype or stored or torch.float32).itemsize >= PROGRESS_MIN_BYTES
    return fill(model, cfg, arch, list(where), lambda n: where[n].get_tensor(n), dtype or stored, str(d), show)


def load_into(model, name_or_path: str | os.PathLike, progress: bool | None = None) -> Path:
    """Copy a local checkpoint's weights into an already built foundry GPT of its architecture (a finetune's
    model, before LoRA wraps it), one checkpoint tensor at a time: no second model is built. A shorter
    block_size keeps the first rows of a learned position table. Returns the checkpoint directory."""
    d = find(name_or_path)
    hf = read_hf_config(d)
    arch = architecture_of(hf, str(d / "config.json"))
    device = next(model.parameters()).device
    fill_from_checkpoint(model, model.cfg, d, arch, device, None, progress)
    return d


def from_hf_state(hf_config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None):
    """A foundry GPT holding the weights of an in-memory Hugging Face state dict (e.g. a transformers model's
    `state_dict()`) whose config is `hf_config` (config.json's dict, or `model.config.to_dict()`)."""
    arch, cfg = model_config(hf_config, "hf_config")
    model = build_meta(cfg)
    first = next(iter(state.values()))
    # cloned: the foundry model must not share storage with the source model (a change to one would be in both)
    fill(model, cfg, arch, list(state), lambda n: state[n].detach().clone(), dtype or first.dtype, "the state dict",
         False)
    return model.eval()


def fill(model, cfg: ModelConfig, arch: Architecture, names: list[str], get, target: torch.dtype | None,
         where: str, progress: bool) -> torch.dtype:
    """Fill every parameter of `model` from checkpoint tensors `names` (read with `get`, one at a time, through
    the key map). A meta-device model is assigned the tensors (floating ones cast to `target`; tied heads
    re-tied; nothing is left on the meta device); a built one has them copied in (its dtype kept)."""
    ours = [n for n, _ in model.named_parameters()]  # tied weights once (lm_head is wte when tied)
    plan = import_plan(arch, cfg, ours, canonical_names(arch, names))
    target = target or torch.float32
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(plan), desc=f"loading {Path(where).name}", unit="tensor", file=sys.stderr)
    params = dict(model.named_parameters())
    on_meta = any(p.is_meta for p in params.values())
    state = {}
    for name, rule, theirs in plan:
        t = combine(rule, [get(n) for n in theirs])
        want = params[name].shape
        if name == "pos.wpe.weight" and t.shape[0] > want[0]:
            t = t[: want[0]]  # a shorter block_size keeps the first positions (nanoGPT's crop_block_size)
        if t.shape != want:
            raise ZooError(f"{where}: {theirs} give {name} the shape {tuple(t.shape)}, the config implies "
                           f"{tuple(want)}")
        if on_meta:
            state[name] = t.to(target) if t.is_floating_point() and t.dtype != target else t
        else:
            with torch.no_grad():
                params[name].copy_(t)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if not on_meta:
        return params[plan[0][0]].dtype
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.wte.weight  # assign replaced the shared Parameter: tie again
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left or unexpected:
        raise ZooError(f"{where}: after loading, {left[:4] or unexpected[:4]} were not filled from the checkpoint")
    return target


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# --------------------------------------------------------------------------------------------------
# Tokenizer, chat template, stop ids
# --------------------------------------------------------------------------------------------------
def chat_template(d: Path) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a list
    of named templates whose 'default' is taken)."""
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(t, list):
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        return t if isinstance(t, str) else None
    return None


def stop_ids(d: Path, hf_config: dict) -> list[int]:
    """Every end-of-sequence id: generation_config.json's eos_token_id (an id or a list: Llama 3 Instruct ends
    on <|eot_id|> as well as <|end_of_text|>), then config.json's; in that order, once each."""
    out: list[int] = []
    sources = []
    gen = d / "generation_config.json"
    if gen.is_file():
        sources.append(json.loads(gen.read_text()).get("eos_token_id"))
    sources.append(hf_config.get("eos_token_id"))
    for v in sources:
        for i in (v if isinstance(v, list) else [v]):
            if isinstance(i, int) and i not in out:
                out.append(i)
    return out


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------
def load_pretrained(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None, *, progress: bool | None = None,
                    quiet: bool = False) -> Pretrained:
    """Load a local checkpoint (a zoo name, a Hugging Face repository id already cached, or a directory).

    dtype None keeps the checkpoint's (bf16 stays bf16); the dtype used is printed unless `quiet`.
    Progress is shown for loads of 1 GiB or more (`progress` forces it on or off)."""
    from foundry.data.tokenize import load_tokenizer

    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ZooError(f"dtype {dtype!r}: use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    d = find(name_or_path)
    hf = read_hf_config(d)
    arch, cfg = model_config(hf, str(d / "config.json"))
    try:
        tokenizer = load_tokenizer(d)
    except (OSError, ValueError) as e:
        raise ZooError(f"{d}: the tokenizer cannot be read: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ZooError(f"{d}: tokenizer.json has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                       f"{cfg.vocab_size}; the files belong to different models")
    model = build_meta(cfg)
    used = fill_from_checkpoint(model, cfg, d, arch, device, dtype, progress)
    model.eval()
    if not quiet:
        n = sum(p.numel() for p in model.parameters())
        how = "as asked" if dtype is not None else "the checkpoint's"
        print(f"zoo: {arch.name} from {d}: {n:,} parameters, dtype {str(used).replace('torch.', '')} "
              f"({how}), device {device}", file=sys.stderr, flush=True)
    return Pretrained(model, cfg, tokenizer, chat_template(d), stop_ids(d, hf), d, hf, arch.name, used)


def named_config(name: str) -> ModelConfig:
    """The ModelConfig of a named zoo model (no checkpoint needed)."""
    return from_dict({"base_model": "v1", "model_args": named_model_args(name)}).model_args
