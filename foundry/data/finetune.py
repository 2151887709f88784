"""Finetuning data: instruction / conversation examples (SFT) and preference pairs (DPO), read from JSONL.

SFT records, one JSON object a line (the first shape that fits is used):
    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    {"prompt": str, "response": str}                       (also "completion" for "response")
    {"instruction": str, "input": str (optional), "output": str}      (Stanford Alpaca)
Preference records:
    {"prompt": str, "chosen": str, "rejected": str}
    {"prompt": [messages], "chosen": [messages] | str, "rejected": [messages] | str}
    {"chosen": str, "rejected": str}      HH-RLHF dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...") that share
                                          a prefix: split before the last assistant turn, turns read as messages

Every example becomes messages, rendered by a chat format (foundry.data.chat, or the checkpoint's own
Jinja template: `template`) with loss on assistant tokens only. A missing or empty field fails with the file
and line; the last `val_examples` records are held out for validation; the first `reserved` records are
skipped (left to an evaluation that scores them: the hh_rlhf task scores a file's first --limit pairs).
Torch-free except where tensors are made (`Packed.batch`).
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from foundry.data.chat import CHAT_FORMATS, compile_template, render_tokens

HH_TURN = "\n\nAssistant:"
_HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ?")


class DataError(ValueError):
    """Finetuning data that cannot be used; the message names the file and line."""


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of a JSONL file (.gz too); blank lines skipped; a bad line fails with its number."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file (finetuning data is a JSONL file, see foundry/data/finetune.py)")
    opener = gzip.open if p.suffix == ".gz" else open
    rows = []
    with opener(p, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{p}:{n}: expected a JSON object, got {type(rec).__name__}")
            rows.append((n, rec))
    if not rows:
        raise DataError(f"{p}: no records")
    return rows


def _text(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: field {key!r} is {'missing' if v is None else 'empty or not a string'}")
    return v


def _messages(v, where: str, key: str) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of messages")
    for i, m in enumerate(v):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or \
                not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DataError(f"{where}: {key}[{i}] must be {{'role': system|user|assistant, 'content': non-empty "
                            f"str}}, got {str(m)[:80]}")
    return v


def sft_messages(rec: dict, where: str) -> list[dict]:
    """The conversation of one SFT record (any of the three shapes)."""
    if "messages" in rec:
        msgs = _messages(rec["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: 'messages' has no assistant turn, so nothing would be trained")
        return msgs
    if "instruction" in rec or "output" in rec:
        user = _text(rec, "instruction", where)
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise DataError(f"{where}: field 'input' must be a string")
        return [{"role": "user", "content": user, "input": inp},   # Alpaca renders input in its own section
                {"role": "assistant", "content": _text(rec, "output", where)}]
    if "prompt" in rec:
        key = "response" if "response" in rec or "completion" not in rec else "completion"
        return [{"role": "user", "content": _text(rec, "prompt", where)},
                {"role": "assistant", "content": _text(rec, key, where)}]
    raise DataError(f"{where}: an SFT record needs 'messages', 'prompt' + 'response', or 'instruction' + 'output'; "
                    f"this one has {sorted(rec)[:6]}")


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(shared prefix ending in 'Assistant:', chosen last turn, rejected last turn) of an HH-RLHF pair; None
    if the two share no assistant turn or are identical."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(HH_TURN, 0, n)
    if cut < 0 or chosen == rejected:
        return None
    cut += len(HH_TURN)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def hh_messages(prefix: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> user/assistant messages (the open
    last assistant turn dropped)."""
    parts = _HH_SPLIT.split(prefix)
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return [m for m in msgs if m["content"]]


@dataclass
class Pair:
    prompt: list[dict]     # messages up to the answer
    chosen: str
    rejected: str
    line: int


def preference_pair(rec: dict, where: str, line: int) -> Pair | None:
    """One preference record as a Pair; None for an HH pair with nothing to prefer (identical endings)."""
    if "chosen" not in rec or "rejected" not in rec:
        raise DataError(f"{where}: a preference record needs 'chosen' and 'rejected' (and a 'prompt', unless both "
                        f"are HH-RLHF dialogues); this one has {sorted(rec)[:6]}")

    def answer(key):
        v = rec[key]
        if isinstance(v, list):
            msgs = _messages(v, where, key)
            if msgs[-1]["role"] != "assistant":
                raise DataError(f"{where}: {key} must end with an assistant message")
            return msgs[-1]["content"]
        return _text(rec, key, where)

    if "prompt" in rec:
        p = rec["prompt"]
        prompt = _messages(p, where, "prompt") if isinstance(p, list) else \
            [{"role": "user", "content": _text(rec, "prompt", where)}]
        return Pair(prompt, answer("chosen").strip(), answer("rejected").strip(), line)
    chosen, rejected = _text(rec, "chosen", where), _text(rec, "rejected", where)
    split = split_hh(chosen, rejected)
    if split is None:
        if HH_TURN not in chosen:
            raise DataError(f"{where}: 'chosen'/'rejected' without a 'prompt' must be HH-RLHF dialogues "
                            f"(\"\\n\\nHuman: ...\\n\\nAssistant: ...\") sharing a prefix")
        return None
    prefix, c, r = split
    prompt = hh_messages(prefix)
    if not prompt or prompt[-1]["role"] != "user" or not c.strip() or not r.strip():
        return None
    return Pair(prompt, c.strip(), r.strip(), line)


def describe_records(rows: list[tuple[int, dict]]) -> str:
    """What a data file looks like, for an error that says what the data is."""
    keys = sorted({k for _, r in rows[:20] for k in r})
    return f"{len(rows)} records with keys {keys[:8]}"


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
class TemplateFormat:
    """A checkpoint's own Jinja chat template (tokenizer_config.json's chat_template), with the loss mask found
    by rendering each prefix of the conversation: the text an assistant turn adds is trained."""

    def __init__(self, template: str, tokenizer):
        self.t = compile_template(template)  # as transformers' apply_chat_template compiles it
        st = getattr(tokenizer, "special_tokens", {})
        self.extra = {"bos_token": st.get("bos", ""), "eos_token": st.get("eos", "")}

    def render(self, messages, add_generation_prompt=False) -> str:
        from jinja2.exceptions import TemplateError

        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return self.t(messages=msgs, add_generation_prompt=add_generation_prompt, **self.extra)
        except TemplateError as e:  # raise_exception() in the template, or a template that cannot render these
            raise DataError(f"chat template: {e}") from None

    def segments(self, messages, add_generation_prompt=False) -> list[tuple[str, bool]]:
        out, prev = [], ""
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                head = self.render(messages[:k], add_generation_prompt=True)
                full = self.render(messages[:k + 1])
                if not head.startswith(prev) or not full.startswith(head):
                    raise DataError("chat template: a conversation's rendering is not a prefix of the next one's, "
                                    "so assistant tokens cannot be told apart; use data.chat_format chatml|llama3")
                out += [(head[len(prev):], False), (full[len(head):], True)]
                prev = full
        tail = self.render(messages, add_generation_prompt)
        if len(tail) > len(prev):
            out.append((tail[len(prev):], False))
        return out


@dataclass
class Renderer:
    """Messages -> (ids, loss mask) in one chat format; built once per run, so a format whose special tokens the
    tokenizer lacks fails before any example is read."""
    fmt: str
    tokenizer: object
    template: str | None = None
    _t: TemplateFormat | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.fmt == "template":
            if not self.template:
                raise DataError("data.chat_format 'template': the base checkpoint has no chat template; choose "
                                "chatml, llama3 or alpaca")
            self._t = TemplateFormat(self.template, self.tokenizer)
            return
        f = CHAT_FORMATS.get(self.fmt)()
        missing = [r for r in f.special_roles if self.tokenizer.token_id(r) is None]
        if missing:
            raise DataError(f"data.chat_format {self.fmt!r} needs the special tokens {missing} as single ids, and the "
                            f"base model's tokenizer has none of them; use data.chat_format=template (the "
                            f"checkpoint's own) or a format its vocabulary has")

    def tokens(self, messages, add_generation_prompt=False) -> tuple[list[int], list[bool]]:
        if self.fmt != "alpaca":  # an Alpaca record's input joins its instruction in every other format
            messages = [{"role": m["role"], "content": m["content"] + (f"\n\n{m['input']}" if m.get("input") else "")}
                        for m in messages]
        if self._t is None:
            return render_tokens(messages, self.fmt, self.tokenizer, add_generation_prompt)
        segs = self._t.segments(messages, add_generation_prompt)
        text = "".join(t for t, _ in segs)
        trained = [tr for t, tr in segs for _ in t]
        ids, offsets = self.tokenizer.encode_with_offsets(text)
        return ids, [bool(trained[s]) if s < len(text) else False for s, _ in offsets]

    def prompt_and_answer(self, prompt: list[dict], answer: str) -> tuple[list[int], list[bool]]:
        """The whole exchange, the mask covering the final answer's tokens (and its end-of-turn marker) only:
        the prompt's earlier assistant turns are context here, not part of the answer."""
        ids, mask = self.tokens(prompt + [{"role": "assistant", "content": answer}])
        end = len(mask)
        while end and not mask[end - 1]:
            end -= 1
        start = end
        while start and mask[start - 1]:
            start -= 1
        return ids, [start <= i < end for i in range(len(mask))]


def choose_format(explicit: str | None, tokenizer, template: str | None) -> str:
    """data.chat_format, or by default the checkpoint's template when it has one, else chatml."""
    if explicit:
        if explicit != "template":
            CHAT_FORMATS.get(explicit)  # "did you mean" on a typo
        return explicit
    return "template" if template else "chatml"


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------
def split_records(rows: list, reserved: int, val_examples: int, path) -> tuple[list, list]:
    """(train, validation): the first `reserved` records skipped, the last `val_examples` held out."""
    rest = rows[reserved:]
    if len(rest) < val_examples + 1:
        raise DataError(f"{path}: {len(rows)} records, {reserved} reserved for evaluation, leave {len(rest)}; "
                        f"need more than data.val_examples={val_examples} (lower it)")
    return rest[:-val_examples], rest[-val_examples:]
