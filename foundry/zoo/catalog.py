"""Named pretrained configs and where their checkpoints are found. Local files only: nothing is downloaded.

A name resolves, in this order, to the first directory that holds a checkpoint (config.json, *.safetensors,
tokenizer.json):
    1. an explicit path (a directory; `~` expanded)
    2. the zoo root, $FOUNDRY_ZOO_DIR (default ~/.cache/foundry/zoo): <root>/<name>, then <root>/<repo name>
       for each Hugging Face repository of the name (e.g. <root>/SmolLM2-135M-Instruct)
    3. the Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub):
       models--<org>--<name>/snapshots/<revision>/ (the revision refs/main names, else the newest)
A Hugging Face repository id (org/name) is looked up the same way. Torch-free: the experiment loader reads
checkpoint configs through `checkpoint_model_args` (init_from) without importing torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from foundry.registry import suggest
from foundry.zoo.architectures import ZooError, architecture_of

EXPECTED_FILES = "config.json, model.safetensors (or shards named by model.safetensors.index.json), tokenizer.json"


@dataclass(frozen=True)
class Named:
    """A named pretrained model: its published config.json (what the parameter count is computed from) and the
    Hugging Face repositories whose local copies it loads, preferred first."""
    description: str
    repos: tuple[str, ...]
    hf_config: dict
    published_params: str


def _llama(**kw) -> dict:
    base = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
                attention_bias=False, mlp_bias=False)
    return {**base, **kw}


_LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
_MISTRAL = dict(architectures=["MistralForCausalLM"], model_type="mistral", hidden_act="silu", hidden_size=4096,
                intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
                eos_token_id=2)

NAMED: dict[str, Named] = {
    "llama3-8b": Named("Llama 3.1 8B (Meta, 2024): GQA 32/8, llama3 RoPE scaling, untied head",
                       ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B",
                        "meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B"),
                       _llama(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                              max_position_embeddings=131072, rope_theta=500000.0,
                              rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, tie_word_embeddings=False,
                              bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
                       "8.03B"),
    "llama3-1b": Named("Llama 3.2 1B (Meta, 2024): GQA 32/8, llama3 RoPE scaling, tied embeddings",
                       ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"),
                       _llama(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                              max_position_embeddings=131072, rope_theta=500000.0,
                              rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, tie_word_embeddings=True,
                              bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
                       "1.24B"),
    "mistral-7b": Named("Mistral 7B v0.1 (Mistral AI, 2023): GQA 32/8, 4096-token sliding window",
                        ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
                        {**_MISTRAL, "vocab_size": 32000, "rope_theta": 10000.0, "sliding_window": 4096},
                        "7.24B"),
    "mistral-7b-v0.3": Named("Mistral 7B v0.3: 32768-token vocabulary, no sliding window, RoPE theta 1e6",
                             ("mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"),
                             {**_MISTRAL, "vocab_size": 32768, "rope_theta": 1000000.0, "sliding_window": None},
                             "7.25B"),
    "qwen2-7b": Named("Qwen2 7B (Alibaba, 2024): GQA 28/4, q/k/v bias, untied head",
                      ("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-7B"),
                      dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                           vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
                           rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
                           sliding_window=131072, max_window_layers=28, tie_word_embeddings=False,
                           bos_token_id=151643, eos_token_id=151643),
                      "7.62B"),
    "gpt2": Named("GPT-2 124M (OpenAI, 2019): learned positions, LayerNorm, tanh GELU, tied embeddings",
                  ("openai-community/gpt2", "gpt2"),
                  dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=50257, n_positions=1024,
                       n_embd=768, n_layer=12, n_head=12, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                       resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=50256, eos_token_id=50256),
                  "124M"),
    "smollm2-135m": Named("SmolLM2 135M Instruct (Hugging Face, 2024; Apache 2.0): Llama architecture, GQA 9/3",
                          ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M"),
                          _llama(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                                 max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                                 bos_token_id=1, eos_token_id=2),
                          "135M"),
}


# --------------------------------------------------------------------------------------------------
# Where checkpoints are looked for
# --------------------------------------------------------------------------------------------------
def zoo_root() -> Path:
    return Path(os.environ.get("FOUNDRY_ZOO_DIR") or Path.home() / ".cache" / "foundry" / "zoo").expanduser()


def hub_cache() -> Path:
    """The Hugging Face hub cache directory, by huggingface_hub's rule."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def missing_files(d: Path) -> list[str]:
    """What directory `d` lacks to be a checkpoint ([] when complete)."""
    if not d.is_dir():
        return ["the directory itself"]
    out = [f for f in ("config.json", "tokenizer.json") if not (d / f).is_file()]
    if not any(d.glob("*.safetensors")):
        out.append("*.safetensors")
    return out


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot of a hub-cache repository directory: refs/main's revision, else the newest complete one."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = repo_dir / "snapshots" / ref.read_text().strip()
        if not missing_files(snap):
            return snap
    snaps = sorted((p for p in (repo_dir / "snapshots").glob("*") if not missing_files(p)),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return snaps[0] if snaps else None


def candidates(name: str) -> list[Path]:
    """Every directory `name` (a zoo name or a Hugging Face repository id) would be looked for in, in order.
    Hub-cache entries are the repository directories (their snapshot is chosen by `find`)."""
    repos = NAMED[name].repos if name in NAMED else (name,)
    root, hub = zoo_root(), hub_cache()
    out = [root / name] if "/" not in name else []
    out += [root / r.split("/")[-1] for r in repos if root / r.split("/")[-1] not in out]
    out += [hub / ("models--" + r.replace("/", "--")) for r in repos]
    return out


def find(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint directory for a zoo name, a Hugging Face repository id or a path; a ZooError naming
    every place searched and the files expected there when there is none."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        lacking = missing_files(p)
        if lacking:
            raise ZooError(f"{p}: not a checkpoint directory: missing {', '.join(lacking)} "
                           f"(expected {EXPECTED_FILES})")
        return p
    is_repo = s.count("/") == 1 and not s.startswith((".", "/", "~")) and all(s.split("/"))
    if s not in NAMED and not is_repo:
        if isinstance(name_or_path, os.PathLike) or s.startswith((".", "/", "~")) or "/" in s:
            raise ZooError(f"{p}: no such checkpoint directory (expected {EXPECTED_FILES} in it)")
        raise ZooError(f"unknown model {s!r}{suggest(s, NAMED)}: give a zoo name ({', '.join(NAMED)}), "
                       f"a Hugging Face repository id (org/name) already in the local cache, or a directory")
    searched = []
    for c in candidates(s):
        if c.name.startswith("models--"):
            snap = _snapshot(c) if c.is_dir() else None
            if snap is not None:
                return snap
            searched.append(f"{c}/snapshots/<revision>/")
        else:
            if not missing_files(c):
                return c
            searched.append(str(c))
    raise ZooError(f"no local checkpoint for {s!r} (nothing is downloaded). Searched:\n  " + "\n  ".join(searched)
                   + f"\nEach place must hold {EXPECTED_FILES}. Put the files in {zoo_root() / s.split('/')[-1]} "
                   f"(or set FOUNDRY_ZOO_DIR), or pass the directory's path.")


def read_hf_config(d: Path) -> dict:
    try:
        return json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"{d / 'config.json'}: cannot be read as JSON ({e})") from None


def checkpoint_model_args(name_or_path: str) -> tuple[dict, Path]:
    """(model_args dict, checkpoint directory) of a local checkpoint, from its config.json; torch-free."""
    d = find(name_or_path)
    hf = read_hf_config(d)
    return architecture_of(hf, str(d / "config.json")).from_hf(hf), d


def named_model_args(name: str) -> dict:
    """model_args of a named config, from its published config.json (no checkpoint needed)."""
    hf = NAMED[name].hf_config
    return architecture_of(hf, name).from_hf(hf)
