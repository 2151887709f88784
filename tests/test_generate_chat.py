"""foundry.generate and foundry.chat: streamed text equals the non-streamed greedy decode, stop ids end a reply,
the chat template renders as transformers renders it, and the REPL keeps (and resets) its history. Targets: a
tiny foundry run directory and a tiny Hugging Face Llama directory loaded through the zoo."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foundry import chat as chat_cli
from foundry import generate as gen_cli
from foundry.checkpoint import load_run, save_checkpoint
from foundry.config import ExperimentConfig
from foundry.data import embedded
from foundry.data.chat import compile_template
from foundry.data.tokenize import BPETokenizer
from foundry.model import GPT

REPO = Path(__file__).resolve().parents[1]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer(vocab_size=400).fit(embedded.load_text()[:30_000])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    """A run directory as foundry.train leaves it (ckpt_best/ + tokenizer.json): a tiny v2 model given 150
    Adam steps on Shakespeare, so that greedy decoding wanders instead of repeating one token."""
    out = tmp_path_factory.mktemp("run")
    cfg = ExperimentConfig().replace({"base_model": "v2", "model_args.n_layer": 2, "model_args.n_head": 2,
                                      "model_args.n_embd": 32, "model_args.block_size": 64,
                                      "model_args.vocab_size": tok.vocab_size, "out_dir": str(out)})
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    model = GPT(cfg.model_args)
    data = torch.tensor(tok.encode(embedded.load_text()[:20_000]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 65, (8,))
        x = torch.stack([data[i:i + 65] for i in starts])
        loss, _ = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    save_checkpoint(out / "ckpt_best", model.eval(), {}, cfg.to_yaml())
    tok.save(out / "tokenizer.json")
    return out


def greedy(model, ids, n, stop=()):
    return model.generate([ids], n, temperature=0, stop_tokens=list(stop))[0]


def first_new_token_at(ids, k):
    """A token that first appears at index k of ids (to be used as a stop id ending the reply there)."""
    for j in range(k, len(ids)):
        if ids[j] not in ids[:j]:
            return j, ids[j]
    pytest.skip("greedy continuation repeats a single token")


# ---- generate -------------------------------------------------------------------------------------------

def test_generate_cli_streams_the_greedy_continuation(run_dir, capsys):
    run = load_run(run_dir)
    prompt = "ROMEO: "
    want = run.tokenizer.decode(greedy(run.model, run.tokenizer.encode(prompt), 24))
    assert gen_cli.main([str(run_dir), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "24"]) == 0
    cap = capsys.readouterr()
    assert cap.out == want + "\n"
    assert "loaded run" in cap.err and "24 tokens" in cap.err


def test_stream_pieces_arrive_one_by_one_and_join_to_the_decode(run_dir):
    target = gen_cli.load_target(str(run_dir))
    pieces = []
    ids = gen_cli.stream_generate(target, target.tokenizer.encode("KING"), gen_cli.Sampling(30, temperature=1.0,
                                                                                            seed=3), pieces.append)
    assert len(pieces) > 10  # streamed, not printed at the end
    assert "".join(pieces) == gen_cli.visible_text(target.tokenizer, ids, target.stop_ids)
    again = gen_cli.stream_generate(target, target.tokenizer.encode("KING"), gen_cli.Sampling(30, temperature=1.0,
                                                                                              seed=3))
    assert again == ids  # --seed reproduces a sampled continuation


def test_text_stream_holds_back_partial_characters(tok):
    text = "naïve café — 🙂🙃 done"
    ids = tok.encode(text)
    assert len(ids) > len(text) / 2  # multi-byte characters span several byte-level tokens here
    stream = gen_cli.TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_generate_cli_stops_at_a_stop_id_and_does_not_print_it(run_dir, capsys):
    run = load_run(run_dir)
    ids = greedy(run.model, run.tokenizer.encode("ROMEO: "), 24)
    k, stop = first_new_token_at(ids, 2)
    gen_cli.main([str(run_dir), "--prompt", "ROMEO: ", "--temperature", "0", "--max-new-tokens", "24",
                  "--stop-id", str(stop)])
    cap = capsys.readouterr()
    assert cap.out == run.tokenizer.decode(ids[:k]) + "\n"
    assert f"{k + 1} tokens" in cap.err and "ended by stop id" in cap.err


def test_bad_arguments_fail_before_loading(run_dir, capsys):
    with pytest.raises(SystemExit):
        gen_cli.main([str(run_dir), "--prompt", "x", "--top-p", "1.5"])
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


def need_zoo():
    import foundry.zoo

    if not hasattr(foundry.zoo, "load_pretrained"):
        pytest.skip("foundry.zoo.load_pretrained is not there yet")


def test_an_unknown_target_names_what_was_tried(tmp_path, capsys):
    need_zoo()
    (tmp_path / "empty").mkdir()
    assert gen_cli.main([str(tmp_path / "empty"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "neither a foundry run" in err and "ckpt_best" in err


# ---- a Hugging Face directory, through the zoo, against transformers -------------------------------------

@pytest.fixture(scope="module")
def hf_dir(run_dir, tmp_path_factory):
    """The trained run exported as a Llama directory whose generation_config names a stop id that greedy
    decoding of "ROMEO: " reaches after a few tokens, with a ChatML chat template."""
    from foundry.zoo import save_hf

    run = load_run(run_dir)
    ids = greedy(run.model, run.tokenizer.encode("ROMEO: "), 24)
    k, stop = first_new_token_at(ids, 2)
    out = tmp_path_factory.mktemp("hf") / "tiny-llama"
    save_hf(run.model, out, tokenizer=run.tokenizer, chat_template=CHATML, stop_ids=[stop])
    return out, k, stop


def test_generate_on_an_hf_dir_is_transformers_greedy_and_stops_at_its_eos(hf_dir, capsys):
    from transformers import AutoModelForCausalLM

    path, k, stop = hf_dir
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    target = gen_cli.load_target(str(path))
    assert target.stop_ids == [stop] and target.source.startswith("zoo")
    ids = target.tokenizer.encode("ROMEO: ")
    with torch.no_grad():
        x = torch.tensor([ids])
        want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert want[-1] == stop and len(want) == k + 1  # transformers stops there too (generation_config's eos)
    assert gen_cli.main([str(path), "--prompt", "ROMEO: ", "--temperature", "0", "--max-new-tokens", "24"]) == 0
    assert capsys.readouterr().out == target.tokenizer.decode(want[:-1]) + "\n"


def test_chat_on_an_hf_dir_renders_its_template_like_transformers(hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _, _ = hf_dir
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    s = session_for(gen_cli.load_target(str(path)), n=10)
    assert s.format == "template"
    convo = [{"role": "user", "content": "Hello"}]
    want = hf_tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    assert s.render(convo) == hf_tok.encode(want, add_special_tokens=False)
    reply = s.reply("Hello")
    with torch.no_grad():
        x = torch.tensor([s.render(convo)])
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                          eos_token_id=s.stop_ids)[0, len(s.render(convo)):].tolist()
    assert reply == hf_tok.decode([i for i in out if i not in s.stop_ids])


# ---- chat -----------------------------------------------------------------------------------------------

def session_for(target, n=12, **kw):
    return chat_cli.ChatSession(target, gen_cli.Sampling(n, temperature=0), **kw)


def test_chat_run_uses_chatml_and_keeps_history(run_dir, tok):
    target = gen_cli.load_target(str(run_dir))
    s = session_for(target)
    assert s.format == "chatml" and tok.token_id("im_end") in s.stop_ids
    first = s.reply("Hello")
    second = s.reply("Again")
    # the second turn was decoded from the whole conversation, rendered as ChatML
    text = ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" + first + "<|im_end|>\n"
            "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n")
    out = greedy(target.model, tok.encode(text), 12, stop=s.stop_ids)
    assert second == tok.decode([i for i in out if i not in s.stop_ids])
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]


def test_chat_with_a_finetuned_run_uses_its_chat_format(run_dir, tok, tmp_path):
    run = load_run(run_dir)
    out = tmp_path / "sft"
    save_checkpoint(out / "ckpt_best", run.model, {}, run.config.replace({"data.chat_format": "llama3"}).to_yaml())
    tok.save(out / "tokenizer.json")
    s = session_for(gen_cli.load_target(str(out)))
    assert s.format == "llama3" and tok.token_id("eot") in s.stop_ids
    assert tok.decode(s.render([{"role": "user", "content": "Hi"}])).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_chat_refuses_what_it_cannot_render(run_dir, tmp_path, capsys):
    assert chat_cli.main([str(run_dir), "--format", "chatlm"]) == 2
    assert "did you mean 'chatml'" in capsys.readouterr().err
    assert chat_cli.main([str(run_dir), "--format", "template"]) == 2
    assert "has no chat template to render" in capsys.readouterr().err


def test_a_damaged_run_is_reported_as_a_run(run_dir, tmp_path, capsys):
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")
    (tmp_path / "run" / "ckpt_best" / "state.pt").unlink()
    assert gen_cli.main([str(tmp_path / "run"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "state.pt" in err and "zoo" not in err


def test_chat_repl_reset_forgets_and_quit_ends(run_dir):
    target = gen_cli.load_target(str(run_dir))
    out, err = io.StringIO(), io.StringIO()
    chat_cli.repl(session_for(target), io.StringIO("Hello\nAgain\n/reset\nHello\n/quit\nnever read\n"), out, err)
    fresh = session_for(target)
    hello = fresh.reply("Hello")
    assert out.getvalue() == hello + "\n" + fresh.reply("Again") + "\n" + hello + "\n"
    assert "conversation cleared" in err.getvalue()


def test_chat_drops_old_turns_past_the_context(run_dir):
    target = gen_cli.load_target(str(run_dir))
    s = session_for(target, n=8)
    notes = []
    for _ in range(6):
        s.reply("Tell me more about the king of Naples", on_note=notes.append)
    assert notes and "oldest turn" in notes[0]
    assert len(s.render(s.messages)) <= target.model.cfg.block_size


def test_chat_template_renders_as_transformers_does(tok):
    from transformers import PreTrainedTokenizerFast

    # a Llama 3.2-style template: loop controls, raise_exception, strftime_now, tojson, whitespace control
    template = ("{{- bos_token }}\n"
                "{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] %}"
                "{%- set messages = messages[1:] %}\n"
                "{%- else %}{%- set sys = 'Today: ' + strftime_now('%Y') %}{%- endif %}\n"
                "{{- '<|im_start|>system\n' + sys + '<|im_end|>\n' }}\n"
                "{% for m in messages %}\n"
                "  {% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}\n"
                "  {% if loop.index > 6 %}{% break %}{% endif %}\n"
                "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}\n"
                "  {% if m.get('meta') %}{{ m['meta'] | tojson }}\n{% endif %}\n"
                "{% endfor %}\n"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}\n")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok._tok, bos_token="<|bos|>", eos_token="<|eos|>")
    hf.chat_template = template
    render = compile_template(template)
    for msgs in ([{"role": "user", "content": " hi "}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "é?", "meta": {"k": "ü"}},
                  {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "More"}]):
        want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert render(messages=msgs, add_generation_prompt=True, bos_token="<|bos|>", eos_token="<|eos|>") == want
    with pytest.raises(Exception, match="bad role"):
        render(messages=[{"role": "tool", "content": "x"}], add_generation_prompt=True, bos_token="")


def test_chat_cli_over_a_pipe(run_dir):
    """The real command: piped stdin, one reply per line, history kept across lines."""
    p = subprocess.run([sys.executable, "-m", "foundry.chat", str(run_dir), "--temperature", "0",
                        "--max-new-tokens", "6", "--threads", "1"], input="Hello\nAgain\n", capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    s = session_for(gen_cli.load_target(str(run_dir)), n=6)
    assert p.stdout == s.reply("Hello") + "\n" + s.reply("Again") + "\n"
    assert "chat format: chatml" in p.stderr


@pytest.mark.parametrize("module", ["foundry.generate", "foundry.chat"])
def test_help_and_umbrella_command(module):
    from foundry.cli.main import COMMANDS

    name = module.split(".")[1]
    assert COMMANDS[name][0] == module
    p = subprocess.run([sys.executable, "-m", "foundry.cli.main", name, "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0 and "RUN_OR_CHECKPOINT" in p.stdout and "--temperature" in p.stdout
