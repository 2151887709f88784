"""`python -m foundry.generate RUN_OR_CHECKPOINT --prompt TEXT`: sample a continuation, printed as it decodes.

    python -m foundry.generate runs/baseline --prompt "ROMEO:" --max-new-tokens 200
    python -m foundry.generate smollm2-135m --prompt "The capital of France is" --temperature 0
    python -m foundry.generate path/to/hf_dir --prompt "def fib(n):" --top-p 0.9 --seed 1

RUN_OR_CHECKPOINT is a foundry run directory (or one of its ckpt_* directories; `foundry.checkpoint.load_run`)
or anything `foundry.zoo.load_pretrained` resolves: a zoo name (`smollm2-135m`, looked for under
$FOUNDRY_ZOO_DIR and the Hugging Face cache) or a local Hugging Face directory. Nothing is downloaded.

The prompt is encoded as Hugging Face's `tokenizer(text)` does (with the tokenizer.json's own framing: a Llama
3 tokenizer prepends <|begin_of_text|>, GPT-2's and SmolLM2's add nothing). Decoding stops at --max-new-tokens,
at the end of the model's context, or at a stop id: the checkpoint's (generation_config.json's eos list for a
zoo checkpoint; the tokenizer's eos token for a run) plus any --stop-id. Stop tokens are not printed. The
continuation goes to stdout as it is sampled; what was loaded and the speed go to stderr.

Sampling is GPT.generate's (temperature 0 = greedy, then top-k, then nucleus top-p); defaults are nanoGPT's
sample.py (temperature 0.8, top-k 200). --seed fixes the sampler's generator.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Target:
    """A model ready to decode, whatever it was loaded from: the GPT, its tokenizer, the ids that end a reply,
    the checkpoint's Jinja chat template (None for foundry runs, which use a foundry chat format), and the
    foundry experiment config of a run (None for a zoo checkpoint)."""
    model: object
    tokenizer: object
    stop_ids: list[int]
    source: str
    chat_template: str | None = None
    chat_format: str | None = None  # a run's data.chat_format (chatml, llama3, alpaca): what it was finetuned on
    run_config: object | None = None
    special_tokens: dict = field(default_factory=dict)  # role -> token text (bos, eos, ...), for templates


def is_run_dir(path: Path) -> bool:
    """A foundry run directory or one of its checkpoints: a config.yaml (a Hugging Face directory has a
    config.json) in it or in its ckpt_best/ or ckpt_last/, or an intact checkpoint. A damaged run is still a
    run, so load_run reports what is damaged instead of the zoo saying it is no checkpoint."""
    from foundry.checkpoint import find_checkpoint

    return any((p / "config.yaml").is_file() or find_checkpoint(p) is not None
               for p in (path, path / "ckpt_best", path / "ckpt_last"))


def load_target(target: str, device: str = "cpu", dtype: str | None = None) -> Target:
    """Load RUN_OR_CHECKPOINT: a foundry run directory first, else through the zoo (name or HF directory)."""
    import torch

    torch_dtype = None if dtype in (None, "auto") else getattr(torch, dtype)
    path = Path(target).expanduser()
    if path.is_dir() and is_run_dir(path):
        from foundry.checkpoint import load_run

        run = load_run(path, device=device)
        if torch_dtype is not None:
            run.model.to(torch_dtype)
        tok = run.tokenizer
        eos = tok.token_id("eos")
        fmt, template = run_chat_format(run.config)
        return Target(run.model, tok, [eos] if eos is not None else [], f"run {run.path}", chat_template=template,
                      chat_format=fmt, run_config=run.config, special_tokens=dict(getattr(tok, "special_tokens", {})))
    from foundry.zoo import ZooError, load_pretrained

    try:
        res = load_pretrained(target, device=device, dtype=torch_dtype)
    except (FileNotFoundError, ZooError) as e:
        hint = (f"{target}: a directory, but neither a foundry run (no model.safetensors + state.pt in it or "
                f"its ckpt_best/ or ckpt_last/) nor a loadable Hugging Face checkpoint" if path.is_dir() else
                f"{target!r} is not a foundry run directory, and the zoo did not find it")
        raise FileNotFoundError(f"{hint}:\n{e}") from None
    tok = res.tokenizer
    return Target(res.model, tok, [int(i) for i in (res.stop_ids or [])], f"zoo {res.source}",
                  chat_template=res.chat_template, special_tokens=dict(getattr(tok, "special_tokens", {})))


def run_chat_format(cfg) -> tuple[str | None, str | None]:
    """(format, template) a run was finetuned with: data.chat_format names a foundry format, or 'template' (and
    by default, with an init_from base that has one) the base checkpoint's own chat template, as the sft and
    dpo objectives render it; the template is None when that base is not found here. (None, None) for a run
    that names neither (chat then picks by the tokenizer)."""
    fmt = getattr(cfg.data, "chat_format", None)
    base = getattr(cfg, "init_from", None)
    if fmt not in (None, "template"):
        return fmt, None
    template = None
    if base and not is_run_dir(Path(base).expanduser()):
        from foundry.zoo import ZooError, find
        from foundry.zoo.load import chat_template

        try:
            template = chat_template(find(base))
        except (ZooError, FileNotFoundError):
            template = None
    return fmt, template


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {name}: CUDA is not available here; use cpu or auto")
    return name


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids as Hugging Face's tokenizer(text) frames them (its post-processor's BOS, if any)."""
    framed = getattr(tokenizer, "encode_framed", None)
    return framed(text) if framed is not None else tokenizer.encode(text)


class TextStream:
    """Token ids in, newly printable text out, one id at a time.

    A byte-level token can end inside a multi-byte character (the text then ends in U+FFFD until the rest
    arrives), and a SentencePiece token can change how the one before decodes (its leading space), so each
    push decodes a short window from the last settled point and emits only the text past what that window gave
    before (the incremental detokenisation of Hugging Face's text-generation-inference). The pieces, with
    flush(), concatenate to decode(all ids pushed). Ids in `skip` (stop tokens) are not shown."""

    def __init__(self, tokenizer, skip=()):
        self.tok, self.skip = tokenizer, set(skip)
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decoded to text already emitted; they give later ids their context
        self.read = 0

    def push(self, token: int) -> str:
        if token in self.skip:
            return ""
        self.ids.append(int(token))
        before = self.tok.decode(self.ids[self.prefix:self.read])
        now = self.tok.decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. an incomplete character at the very end)."""
        before = self.tok.decode(self.ids[self.prefix:self.read])
        now = self.tok.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")


def add_sampling_args(ap: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    g = ap.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=200, help="keep the k most likely tokens (default 200; 0 = off)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with this mass")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: unseeded)")
    g.add_argument("--stop-id", type=int, action="append", default=[],
                   help="another token id that ends the reply (repeatable; added to the checkpoint's)")
    g = ap.add_argument_group("model")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    g.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weights dtype (auto: the checkpoint's own; foundry runs are float32)")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")


def sampling_from_args(args) -> Sampling:
    s = Sampling(args.max_new_tokens, args.temperature, args.top_k or None, args.top_p, args.seed)
    s.check()
    return s


def stream_generate(target: Target, prompt_ids: list[int], sampling: Sampling,
                    on_text: Callable[[str], None] | None = None, extra_stop: tuple = ()) -> list[int]:
    """Decode one continuation of `prompt_ids`, calling on_text with each newly printable piece of text.
    Returns the new ids, cut after the first stop id (kept, as GPT.generate does)."""
    import torch

    model = target.model
    device = next(model.parameters()).device
    stops = sorted(set(target.stop_ids) | set(extra_stop))
    gen = None
    if sampling.seed is not None:
        gen = torch.Generator(device=device).manual_seed(sampling.seed)
    stream = TextStream(target.tokenizer, skip=stops)
    emit = on_text or (lambda s: None)

    def on_token(row: int, token: int) -> None:
        piece = stream.push(token)
        if piece:
            emit(piece)

    # (not under inference_mode: RoPE's cos/sin cache keys on the positions tensor's version counter)
    out = model.generate([prompt_ids], sampling.max_new_tokens, temperature=sampling.temperature,
                         top_k=sampling.top_k, top_p=sampling.top_p, stop_tokens=stops, generator=gen,
                         on_token=on_token)[0]
    tail = stream.flush()
    if tail:
        emit(tail)
    return out


def visible_text(tokenizer, ids: list[int], stops) -> str:
    """The decoded reply without its stop tokens (what TextStream prints)."""
    stops = set(stops)
    return tokenizer.decode([i for i in ids if i not in stops])


def prepare(args) -> Target:
    """Shared start of the generate and chat commands: threads, device, load, one line of what was loaded."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    target = load_target(args.target, device=device, dtype=args.dtype)
    p = next(target.model.parameters())
    n = sum(x.numel() for x in target.model.parameters())
    print(f"loaded {target.source}: {n / 1e6:.1f}M parameters, {str(p.dtype).replace('torch.', '')} on "
          f"{p.device}, stop ids {sorted(set(target.stop_ids) | set(args.stop_id))} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundry.generate", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a foundry run directory, a zoo name or an HF directory")
    ap.add_argument("--prompt", required=True, help="text to continue ('-' reads it from stdin)")
    add_sampling_args(ap)
    args = ap.parse_args(argv)
    try:
        sampling = sampling_from_args(args)
    except ValueError as e:
        ap.error(str(e))
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        ap.error("--prompt is empty")
    try:
        target = prepare(args)
        ids = encode_prompt(target.tokenizer, prompt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    t0 = time.perf_counter()
    out = stream_generate(target, ids, sampling, write, extra_stop=tuple(args.stop_id))
    dt = time.perf_counter() - t0
    sys.stdout.write("\n")
    why = "stop id" if out and out[-1] in set(target.stop_ids) | set(args.stop_id) else "length"
    print(f"[{len(out)} tokens in {dt:.2f} s, {len(out) / max(dt, 1e-9):.1f} tokens/s; prompt {len(ids)} "
          f"tokens; ended by {why}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
