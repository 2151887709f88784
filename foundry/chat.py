"""`python -m foundry.chat RUN_OR_CHECKPOINT`: an interactive conversation, one line per user turn.

    python -m foundry.chat smollm2-135m                       # the checkpoint's own chat template
    python -m foundry.chat runs/sft --format chatml --system "Answer briefly."
    printf 'Hi!\\nWhat did I just say?\\n' | python -m foundry.chat smollm2-135m --temperature 0

RUN_OR_CHECKPOINT is resolved as by `python -m foundry.generate` (a foundry run directory, a zoo name or a
local Hugging Face directory). Each turn renders the whole conversation so far and decodes the reply, streamed:

- a zoo checkpoint with a chat template (tokenizer_config.json's `chat_template` or chat_template.jinja) is
  rendered by that Jinja template, as Hugging Face's apply_chat_template renders it (sandboxed environment,
  trim_blocks / lstrip_blocks, bos_token / eos_token, add_generation_prompt);
- a foundry run, or any target with --format, uses a foundry chat format (foundry/data/chat.py: chatml,
  llama3, alpaca; alpaca is single-turn, so each turn stands alone). A finetuned run uses what it was trained
  on: its data.chat_format, or its init_from base's template; other runs take chatml when the tokenizer has
  the <|im_start|>/<|im_end|> tokens (foundry's bpe:N vocabularies do), else llama3's markers.

The reply ends at the checkpoint's stop ids (generation_config.json's eos list), the format's end-of-turn
token (<|im_end|>, <|eot_id|>, or eos for alpaca), --stop-id, or --max-new-tokens. When the conversation no
longer fits the model's context, the oldest turns are dropped (the system message is kept) and a note says so.

Commands at the prompt: /reset (forget the conversation), /system TEXT (set the system message and reset),
/quit (or end of input).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from foundry.data.chat import compile_template
from foundry.generate import Sampling, Target, add_sampling_args, prepare, sampling_from_args, stream_generate

# the end-of-turn role of each foundry chat format (foundry/data/chat.py's special_roles)
TURN_END = {"chatml": "im_end", "llama3": "eot", "alpaca": "eos"}


class ChatSession:
    """A conversation with a loaded Target: the history, how it is rendered to ids, and which ids end a turn."""

    def __init__(self, target: Target, sampling: Sampling, fmt: str | None = None, system: str | None = None,
                 extra_stop: tuple = ()):
        self.target, self.sampling, self.system = target, sampling, system
        self.messages: list[dict] = []
        tok = target.tokenizer
        stops = set(target.stop_ids) | set(extra_stop)
        fmt = fmt or target.chat_format
        if fmt == "template" or (fmt is None and target.chat_template is not None):
            if target.chat_template is None:
                base = getattr(target.run_config, "init_from", None)
                raise ValueError(f"{target.source} has no chat template to render" + (
                    f" (it was finetuned on the template of its base {base!r}, which is not found here)"
                    if base else "") + "; make it available, or pass --format chatml|llama3|alpaca")
            self.format, self._template = "template", compile_template(target.chat_template)
        else:
            from foundry.data.chat import CHAT_FORMATS

            if fmt is None:
                fmt = next((f for f in ("chatml", "llama3") if all(
                    tok.token_id(r) is not None for r in CHAT_FORMATS.get(f).special_roles)), None)
                if fmt is None:
                    raise ValueError(f"{target.source} has no chat template and its tokenizer has neither the ChatML "
                                     f"nor the Llama 3 chat tokens; pass --format chatml|llama3|alpaca")
            CHAT_FORMATS.get(fmt)  # an unknown name fails here, with "did you mean"
            self.format, self._template = fmt, None
            end = tok.token_id(TURN_END[fmt])
            if end is not None:
                stops.add(end)
        self.stop_ids = sorted(stops)
        self.limit = target.model.cfg.block_size  # the context the model was built for

    def reset(self) -> None:
        self.messages = []

    def render(self, messages: list[dict]) -> list[int]:
        """Ids of the conversation with the assistant's header opened (add_generation_prompt)."""
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        tok = self.target.tokenizer
        if self._template is not None:
            sp = self.target.special_tokens
            text = self._template(messages=msgs, add_generation_prompt=True, bos_token=sp.get("bos", ""),
                                  eos_token=sp.get("eos", ""), pad_token=sp.get("pad", ""))
        else:
            from foundry.data.chat import render_text

            if self.format == "alpaca":  # single-turn: the newest user message alone
                msgs = msgs[:1] * bool(self.system) + messages[-1:]
            text = render_text(msgs, self.format, add_generation_prompt=True,
                               eos=tok.special_tokens.get("eos", "") if hasattr(tok, "special_tokens") else "")
        # the template writes every special token itself (apply_chat_template encodes without adding any)
        return tok.encode(text)

    def fit(self, messages: list[dict]) -> tuple[list[dict], list[int], int]:
        """Drop the oldest turns until the rendered conversation leaves room for a reply; (kept, ids, dropped)."""
        room = min(self.sampling.max_new_tokens, self.limit // 4)  # a reply needs some room; generate stops at the end
        dropped = 0
        while True:
            ids = self.render(messages)
            if len(ids) + room <= self.limit:
                return messages, ids, dropped
            if len(messages) <= 1:
                raise ValueError(f"this message alone renders to {len(ids)} tokens; the model's context is "
                                 f"{self.limit}. Send a shorter one (or /reset)")
            messages, dropped = messages[2:] if len(messages) > 2 else messages[1:], dropped + 1

    def reply(self, text: str, on_text: Callable[[str], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> str:
        """Add the user's message, decode the assistant's reply (streamed through on_text), keep both."""
        kept, ids, dropped = self.fit(self.messages + [{"role": "user", "content": text}])
        if dropped and on_note is not None:
            on_note(f"(the conversation outgrew the model's {self.limit}-token context: "
                    f"the {dropped} oldest turn(s) were dropped)")
        out = stream_generate(self.target, ids, self.sampling, on_text, extra_stop=tuple(self.stop_ids))
        answer = self.target.tokenizer.decode([i for i in out if i not in set(self.stop_ids)])
        self.messages = kept + [{"role": "assistant", "content": answer}]
        return answer


def repl(session: ChatSession, inp=None, out=None, err=None) -> int:
    """Read user turns line by line until /quit or end of input; replies stream to `out`."""
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    tty = inp.isatty()
    if tty:
        import readline  # noqa: F401  (line editing and history for input())
        print("/reset forgets the conversation, /system TEXT sets the system message, /quit ends", file=err)

    def read() -> str | None:
        if tty:
            try:
                return input("> ")
            except EOFError:
                return None
        line = inp.readline()
        return None if line == "" else line.rstrip("\n")

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    while (line := read()) is not None:
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/reset":
                session.reset()
                print("(conversation cleared)", file=err)
            elif cmd == "/system":
                session.system = rest.strip() or None
                session.reset()
                print("(system message set; conversation cleared)", file=err)
            else:
                print(f"unknown command {cmd!r}: /reset, /system TEXT, /quit", file=err)
            continue
        try:
            session.reply(line, write, on_note=lambda s: print(s, file=err))
        except ValueError as e:
            print(f"error: {e}", file=err)
            continue
        write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundry.chat", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a foundry run directory, a zoo name or an HF directory")
    ap.add_argument("--format", default=None,
                    help="a foundry chat format (chatml, llama3, alpaca) instead of the checkpoint's template, "
                         "or 'template' (the checkpoint's own)")
    ap.add_argument("--system", default=None, help="system message (default: none, or the template's own)")
    add_sampling_args(ap, max_new_tokens=512)
    args = ap.parse_args(argv)
    try:
        sampling = sampling_from_args(args)
        target = prepare(args)
        session = ChatSession(target, sampling, fmt=args.format, system=args.system, extra_stop=tuple(args.stop_id))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"chat format: {'the checkpoint template' if session.format == 'template' else session.format}; "
          f"a reply ends at ids {session.stop_ids}", file=sys.stderr)
    return repl(session)


if __name__ == "__main__":
    sys.exit(main())
