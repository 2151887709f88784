"""Chat formats: a conversation rendered to text and tokens, with a loss mask on the assistant's turns only.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str}. Each format is a small
registered class that splits the conversation into segments (text, trained); the assistant's content and its
end-of-turn marker are trained, everything else (system, user, headers) is context only.

    chatml   <|im_start|>{role}\\n{content}<|im_end|>\\n per message
             (OpenAI ChatML, as in the chat_template of Qwen / OpenHermes tokenizer_config.json files)
    llama3   <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\\n\\n{content, stripped}<|eot_id|>
             (Meta Llama 3 chat template)
    alpaca   "Below is an instruction that describes a task[, paired with an input ...]. Write a response that
             appropriately completes the request.\\n\\n### Instruction:\\n{instruction}\\n\\n[### Input:\\n{input}
             \\n\\n]### Response:" then {output}<EOS>, single turn (tatsu-lab/stanford_alpaca train.py; the
             response follows "### Response:" directly there, and so it does here). A user message may carry an
             "input" key for Alpaca's input field; a system message replaces the preamble.

Tokens are the encoding of the whole rendered text (exactly what a tokenizer gives the text, as Hugging Face's
apply_chat_template(tokenize=True) does); a token is trained when the character it starts at lies in a trained
segment. loss_mask[j] says whether token j is a training target (the convention of foundry.data.pack).

A pretrained checkpoint's own Jinja chat template is compiled by `compile_template`, as transformers does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from foundry.registry import Registry

CHAT_FORMATS = Registry("chat format")
ROLES = ("system", "user", "assistant")


def _check(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation is a non-empty list of {'role', 'content'} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: expected {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
    return messages


class ChatFormat:
    """Base: `segments` gives [(text, trained)]; `special_roles` are the tokenizer roles it needs as single ids."""
    special_roles: tuple = ()

    def segments(self, messages, add_generation_prompt: bool = False, eos: str = "") -> list[tuple[str, bool]]:
        raise NotImplementedError


@CHAT_FORMATS.register("chatml")
class ChatML(ChatFormat):
    """OpenAI ChatML: <|im_start|>role\\ncontent<|im_end|>\\n."""
    special_roles = ("im_start", "im_end")

    def segments(self, messages, add_generation_prompt=False, eos=""):
        out = []
        for m in _check(messages):
            a = m["role"] == "assistant"
            out += [(f"<|im_start|>{m['role']}\n", False), (m["content"] + "<|im_end|>", a), ("\n", False)]
        if add_generation_prompt:
            out.append(("<|im_start|>assistant\n", False))
        return out


@CHAT_FORMATS.register("llama3")
class Llama3(ChatFormat):
    """Meta Llama 3: header tokens around the role, <|eot_id|> ends each turn, content stripped."""
    special_roles = ("begin_of_text", "start_header", "end_header", "eot")

    def segments(self, messages, add_generation_prompt=False, eos=""):
        out = [("<|begin_of_text|>", False)]
        for m in _check(messages):
            a = m["role"] == "assistant"
            out += [(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", False),
                    (m["content"].strip() + "<|eot_id|>", a)]
        if add_generation_prompt:
            out.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
        return out


ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                         "further context. Write a response that appropriately completes the request.")


@CHAT_FORMATS.register("alpaca")
class Alpaca(ChatFormat):
    """Stanford Alpaca: a preamble, ### Instruction / ### Input / ### Response; single turn."""
    special_roles = ("eos",)

    def segments(self, messages, add_generation_prompt=False, eos=""):
        msgs = _check(messages)
        system = [m["content"] for m in msgs if m["role"] == "system"]
        turns = [m for m in msgs if m["role"] != "system"]
        if len(system) > 1 or not turns or turns[0]["role"] != "user" or len(turns) > 2 or \
                (len(turns) == 2 and turns[1]["role"] != "assistant"):
            raise ValueError("alpaca is single-turn: [system?], user, assistant (use chatml or llama3 for more turns)")
        user = turns[0]
        inp = user.get("input") or ""
        pre = system[0] if system else (ALPACA_PREAMBLE_INPUT if inp else ALPACA_PREAMBLE)
        prompt = f"{pre}\n\n### Instruction:\n{user['content']}\n\n"
        if inp:
            prompt += f"### Input:\n{inp}\n\n"
        prompt += "### Response:"
        out = [(prompt, False)]
        if len(turns) == 2:
            out.append((turns[1]["content"] + eos, True))
        return out


def compile_template(template: str) -> Callable[..., str]:
    """A checkpoint's Jinja chat template (tokenizer_config.json's chat_template), compiled as transformers'
    apply_chat_template compiles it: a sandboxed environment with trim_blocks and lstrip_blocks, loop controls,
    `raise_exception`, a `tojson` that keeps non-ASCII, and `strftime_now` (Llama 3.x templates date their
    system line). Returns render(messages=..., add_generation_prompt=..., bos_token=..., eos_token=...) -> str."""
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    compiled = env.from_string(template)
    return lambda **kw: compiled.render(**kw)


def render_text(messages, fmt: str, add_generation_prompt: bool = False, eos: str = "<|eos|>") -> str:
    """The conversation as text in format `fmt` (eos: the end-of-sequence text Alpaca appends to a response)."""
    return "".join(t for t, _ in CHAT_FORMATS.get(fmt)().segments(messages, add_generation_prompt, eos))


def render_tokens(messages, fmt: str, tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask): the encoded conversation and, per token, whether it is a training target."""
    f = CHAT_FORMATS.get(fmt)()
    missing = [r for r in f.special_roles if getattr(tokenizer, "token_id", lambda r: None)(r) is None]
    if missing:
        raise ValueError(f"chat format {fmt!r} needs the special tokens {missing} as single ids; this "
                         f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)} tokenizer has none. Use a foundry "
                         f"BPE tokenizer (bpe:N), whose vocabulary has them")
    eos = tokenizer.special_tokens.get("eos", "")
    segs = f.segments(messages, add_generation_prompt, eos)
    text = "".join(t for t, _ in segs)
    trained_char = []
    for t, trained in segs:
        trained_char += [trained] * len(t)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = [bool(trained_char[s]) if s < len(text) else False for s, _ in offsets]
    return ids, mask


def render_jsonl(inp, out, fmt: str, tokenizer_path=None) -> int:
    """`python -m foundry.data chat`: JSONL of {"messages": [...]} -> JSONL of {"text"[, "ids", "loss_mask"]}."""
    from foundry.config import write_text_atomic
    from foundry.data.prepare import Source, _check_not_binary
    from foundry.data.tokenize import load_tokenizer

    CHAT_FORMATS.get(fmt)  # an unknown format fails before reading
    src = Source(Path(inp), "jsonl")
    if not src.path.is_file():
        raise FileNotFoundError(f"--input {inp}: no such file")
    _check_not_binary(src)
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else None
    eos = tok.special_tokens.get("eos", "<|eos|>") if tok is not None else "<|eos|>"
    lines = []
    for lineno, line in enumerate(src.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{inp}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "messages" not in rec:
            raise ValueError(f"{inp}:{lineno}: expected an object with a 'messages' list")
        try:
            row = {"text": render_text(rec["messages"], fmt, eos=eos)}
            if tok is not None:
                row["ids"], row["loss_mask"] = render_tokens(rec["messages"], fmt, tok)
        except ValueError as e:
            raise ValueError(f"{inp}:{lineno}: {e}") from None
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(out, "".join(x + "\n" for x in lines))
    return len(lines)
