"""Writing a foundry GPT as a Hugging Face checkpoint that `transformers.AutoModelForCausalLM` loads.

    save_hf(model, "out/dir", tokenizer=tok)           # or save_hf(load_pretrained(...), "out/dir")

Writes config.json, safetensors shards of at most `max_shard_bytes` (with model.safetensors.index.json when
there are several), tokenizer.json + tokenizer_config.json (with the chat template) and
generation_config.json (the stop ids), into a temporary directory renamed into place. A model with a
component the architecture cannot represent is refused before anything is written, naming the component.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from foundry.zoo.architectures import ZooError, choose_architecture
from foundry.zoo.convert import export_state

DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, cut into consecutive groups of at most max_bytes (a bigger tensor gets its own)."""
    shards, cur, size = [], {}, 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = t, size + n
    if cur:
        shards.append(cur)
    return shards


def _char_tokenizer(chars: list[str]) -> dict:
    """foundry's character tokenizer as a Hugging Face tokenizer.json: every character split off alone, looked up
    in a word-level vocabulary with foundry's ids, joined back without separators. A character outside the
    alphabet is an error there too ("<unk>" is deliberately not in the vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return json.loads(tok.to_str())


def _tokenizer_files(tokenizer, chat_template: str | None, block_size: int) -> dict[str, str]:
    if tokenizer is None:
        return {}
    try:
        wrapped = json.loads(tokenizer.to_json())
    except AttributeError:
        wrapped = {}
    if wrapped.get("type") == "char":
        wrapped = {"type": "bpe", "special_tokens": {}, "tokenizer": _char_tokenizer(wrapped["chars"])}
    if wrapped.get("type") != "bpe" or "tokenizer" not in wrapped:
        raise ZooError(f"tokenizer {getattr(tokenizer, 'kind', type(tokenizer).__name__)!r} has no Hugging Face "
                       f"tokenizer.json form; export with tokenizer=None (weights and config only), or train with a "
                       f"BPE or pretrained tokenizer")
    roles = wrapped.get("special_tokens", {})
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
          "clean_up_tokenization_spaces": False}
    for role in ("bos", "eos", "pad"):
        if role in roles:
            tc[f"{role}_token"] = roles[role]
    if chat_template:
        tc["chat_template"] = chat_template
    return {"tokenizer.json": json.dumps(wrapped["tokenizer"], ensure_ascii=False),
            "tokenizer_config.json": json.dumps(tc, indent=2, ensure_ascii=False)}


def save_hf(model, out_dir: str | os.PathLike, *, tokenizer=None, chat_template: str | None = None,
            stop_ids: list[int] | None = None, architecture: str | None = None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> Path:
    """Write `model` (a foundry GPT, or a zoo Pretrained: its tokenizer, template, stop ids and architecture
    are then the defaults) as a Hugging Face checkpoint directory; returns its path.

    architecture None picks the one matching the model's components (see architectures.choose_architecture)."""
    from safetensors.torch import save_file

    from foundry.checkpoint import model_state

    if hasattr(model, "model") and hasattr(model, "hf_config"):  # a Pretrained
        p = model
        model, tokenizer = p.model, tokenizer if tokenizer is not None else p.tokenizer
        chat_template = chat_template if chat_template is not None else p.chat_template
        stop_ids = stop_ids if stop_ids is not None else p.stop_ids
        architecture = architecture or p.architecture
    if tokenizer is False:  # explicitly none, even for a Pretrained
        tokenizer = None
    cfg = model.cfg
    arch = choose_architecture(cfg, architecture)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ZooError(f"{out} exists and is not empty; choose another directory or pass overwrite=True")
    tok_files = _tokenizer_files(tokenizer, chat_template, cfg.block_size)
    state = export_state(arch, cfg, model_state(model))  # refuses a tensor with no place (e.g. LoRA adapters)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = max(dtypes, key=lambda d: sum(t.numel() for t in state.values() if t.dtype == d)) if dtypes else torch.float32

    hf = arch.to_hf(cfg)
    hf["torch_dtype"] = str(dtype).replace("torch.", "")
    stops = list(stop_ids or [])
    if tokenizer is not None:
        for role in ("eos", "bos", "pad"):
            i = tokenizer.token_id(role)
            if i is not None:
                hf.setdefault(f"{role}_token_id", i)
        if not stops and tokenizer.token_id("eos") is not None:
            stops = [tokenizer.token_id("eos")]
    if stops:
        hf["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    gen = {"bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id")}
    if hf.get("pad_token_id") is not None:
        gen["pad_token_id"] = hf["pad_token_id"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    try:
        shards = _shards(state, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(t.numel() * t.element_size() for t in state.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None},
                                                               indent=2))
        for name, text in tok_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
