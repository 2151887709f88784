"""Chat formats against the published templates: ChatML and Llama 3 through Hugging Face's
apply_chat_template with those templates (text and token ids), Alpaca against stanford_alpaca's prompt layout;
assistant-only loss masks; clear errors."""
from __future__ import annotations

import json
import warnings

import pytest

from foundry.data.chat import CHAT_FORMATS, render_text, render_tokens
from foundry.data.pack import IGNORE, pack
from foundry.data.tokenize import BPETokenizer, CharTokenizer

# The chat_template strings as published in the models' tokenizer_config.json files (the reference).
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

CONV = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?\n"},
        {"role": "assistant", "content": " Four.\n\n"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Six."}]


@pytest.fixture(scope="module")
def tok():
    corpus = "What is two plus two? Four. And three? Six. user assistant system You are terse.\n" * 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BPETokenizer(vocab_size=400).fit(corpus)


@pytest.fixture(scope="module")
def hf(tok):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok._tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|eos|>")


def _hf_ids(out):
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


@pytest.mark.parametrize("fmt,template", [("chatml", CHATML_TEMPLATE), ("llama3", LLAMA3_TEMPLATE)])
@pytest.mark.parametrize("gen", [False, True])
def test_matches_hugging_face_apply_chat_template(tok, hf, fmt, template, gen):
    conv = CONV[:-1] if gen else CONV
    want_text = hf.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=gen)
    assert render_text(conv, fmt, add_generation_prompt=gen) == want_text
    want_ids = _hf_ids(hf.apply_chat_template(conv, chat_template=template, tokenize=True, add_generation_prompt=gen))
    ids, mask = render_tokens(conv, fmt, tok, add_generation_prompt=gen)
    assert ids == want_ids and len(mask) == len(ids)


def test_published_marker_layout():
    assert render_text(CONV[1:3], "chatml") == ("<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n"
                                                "<|im_start|>assistant\n Four.\n\n<|im_end|>\n")
    assert render_text(CONV[1:3], "llama3") == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                                                "What is 2+2?<|eot_id|><|start_header_id|>assistant"
                                                "<|end_header_id|>\n\nFour.<|eot_id|>")


def test_alpaca_matches_stanford_alpaca_layout():
    no_input = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert render_text(no_input, "alpaca", eos="</s>") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:Blue.</s>")
    with_input = [{"role": "user", "content": "Translate.", "input": "chat"}, {"role": "assistant", "content": "cat"}]
    assert render_text(with_input, "alpaca", eos="") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nchat\n\n### Response:cat")
    with pytest.raises(ValueError, match="single-turn"):
        render_text(CONV, "alpaca")


@pytest.mark.parametrize("fmt,end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("alpaca", "<|eos|>")])
def test_loss_mask_covers_exactly_the_assistant_turns(tok, fmt, end):
    conv = CONV if fmt != "alpaca" else CONV[1:3]
    ids, mask = render_tokens(conv, fmt, tok)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    replies = [m["content"] for m in conv if m["role"] == "assistant"]
    if fmt == "llama3":
        replies = [r.strip() for r in replies]
    assert trained == "".join(r + end for r in replies)
    # the mask carries through packing: targets exist only for assistant tokens
    p = pack([(ids, mask)], 256)
    kept = [int(t) for t in p.targets[0] if t != IGNORE]
    assert kept == [i for i, m in zip(ids[1:], mask[1:]) if m]


def test_formats_are_registered():
    assert CHAT_FORMATS.names() == ["alpaca", "chatml", "llama3"]
    with pytest.raises(KeyError, match="did you mean 'chatml'"):
        CHAT_FORMATS.get("chatm")


def test_clear_errors(tok):
    with pytest.raises(ValueError, match="needs the special tokens"):
        render_tokens(CONV, "chatml", CharTokenizer().fit("abc"))
    with pytest.raises(ValueError, match="message 0"):
        render_text([{"role": "robot", "content": "x"}], "chatml")
    with pytest.raises(ValueError, match="non-empty list"):
        render_text([], "llama3")


def test_chat_command(tmp_path, tok):
    from foundry.data.__main__ import main
    tok.save(tmp_path / "tok.json")
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    assert main(["chat", "--input", str(tmp_path / "c.jsonl"), "--format", "chatml", "--tokenizer",
                 str(tmp_path / "tok.json"), "--out", str(tmp_path / "o.jsonl")]) == 0
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["text"] == render_text(CONV, "chatml")
    assert (row["ids"], row["loss_mask"]) == tuple(map(list, render_tokens(CONV, "chatml", tok)))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": CONV}) + "\n{oops\n")
    assert main(["chat", "--input", str(tmp_path / "bad.jsonl"), "--format", "chatml",
                 "--out", str(tmp_path / "o2.jsonl")]) == 2
