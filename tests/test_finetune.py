"""Finetuning: the DPO losses against their published formulas, SFT/DPO runs through the one training core,
LoRA checkpoints (adapter-only, resumed exactly, loaded merged), PEFT's format both ways, the bad-input errors,
and the finetuning mutation types."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import require_extra
from finetune_helpers import finetune_config, make_base_run, pair_records, sft_records, write_jsonl
from safetensors.torch import load_file

from foundry import lora
from foundry.config import ConfigError
from foundry.train import read_metrics, train
from foundry.trainer.objectives import dpo_loss


# --------------------------------------------------------------------------------------------------
# DPO losses, by hand
# --------------------------------------------------------------------------------------------------
def _sig(z):
    return 1 / (1 + math.exp(-z))


CASES = [(-10.0, -12.0, -11.0, -11.5), (-3.0, -2.0, -3.5, -1.0), (-5.0, -5.0, -5.0, -5.0)]


@pytest.mark.parametrize("pc,pr,rc,rr", CASES)
@pytest.mark.parametrize("kind", ["sigmoid", "robust", "hinge", "ipo"])
def test_dpo_loss_equals_the_published_formula(kind, pc, pr, rc, rr):
    beta, e = 0.2, 0.1
    h = (pc - rc) - (pr - rr)
    expected = {
        "sigmoid": -(1 - e) * math.log(_sig(beta * h)) - e * math.log(_sig(-beta * h)),     # cDPO
        "robust": (-(1 - e) * math.log(_sig(beta * h)) + e * math.log(_sig(-beta * h))) / (1 - 2 * e),
        "hinge": max(0.0, 1 - beta * h),
        "ipo": (h - 1 / (2 * beta)) ** 2,
    }[kind]
    t = [torch.tensor([v], dtype=torch.float64) for v in (pc, pr, rc, rr)]
    got = float(dpo_loss(*t, beta=beta, loss_type=kind, label_smoothing=e)[0])
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def _trl_loss(per_token: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, beta: float, types: list,
              weights: list, label_smoothing: float = 0.0) -> float:
    """TRL's DPOTrainer._compute_loss (TRL 1.x) on given per-token log-probs: a stand-in model returns them as
    its fused head would (0 outside the completion), the reference log-probs come precomputed (B chosen then B
    rejected rows, as TRL batches them)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl.trainer.dpo_trainer import DPOTrainer
    n, T1 = per_token.shape
    acc = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    self = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                           loss_types=types, loss_weights=weights, beta=beta, label_smoothing=label_smoothing,
                           use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1)
    out = SimpleNamespace(log_probs=per_token * mask, entropy=torch.zeros(n, T1), mean_logits=torch.zeros(n, T1),
                          is_top1=torch.zeros(n, T1, dtype=torch.bool))
    completion = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], 1)  # (2B, T): shifted by one
    inputs = {"input_ids": torch.ones(n, T1 + 1, dtype=torch.long), "attention_mask": torch.ones(n, T1 + 1),
              "completion_mask": completion, "ref_chosen_logps": ref[:n // 2], "ref_rejected_logps": ref[n // 2:]}
    return float(DPOTrainer._compute_loss(self, lambda **kw: out, inputs, False))


@pytest.mark.parametrize("kind", ["sigmoid", "hinge", "robust", "rpo"])
def test_dpo_losses_equal_trls_on_the_same_log_probs(kind):
    """Differential, against TRL where installed (a test-only comparison). TRL's `ipo` divides the log-ratios by
    the answer lengths (its comments: the IPO authors' own practice); ours is the paper's eq. 17 on sums, checked
    by hand above, so it is left out. RPO is TRL's [sigmoid, sft] with weights [1, alpha]; its NLL is a token mean
    over the batch and ours a per-answer mean (Pang et al. eq. 1): the same when the chosen answers are equally
    long, as here."""
    require_extra("trl", "test")
    g = torch.Generator().manual_seed(0)
    B, T1 = 4, 9
    per_token = -torch.rand(2 * B, T1, generator=g, dtype=torch.float64) * 3
    mask = torch.zeros(2 * B, T1)
    lengths = [6, 6, 6, 6, 3, 8, 5, 7] if kind == "rpo" else [6, 2, 9, 4, 3, 8, 5, 7]
    for i, k in enumerate(lengths):
        mask[i, T1 - k:] = 1
    ref = -torch.rand(2 * B, generator=g, dtype=torch.float64) * 20
    logps = (per_token * mask).sum(1)
    beta, e, alpha = 0.3, 0.2 if kind == "robust" else 0.0, 0.7
    if kind == "rpo":
        want = _trl_loss(per_token, mask, ref, beta, ["sigmoid", "sft"], [1.0, alpha])
        got = float(dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta, rpo_alpha=alpha,
                             chosen_tokens=mask[:B].sum(1)).mean())
    else:
        want = _trl_loss(per_token, mask, ref, beta, [kind], [1.0], e)
        got = float(dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta, kind, e).mean())
    assert got == pytest.approx(want, rel=1e-10)


def test_plain_dpo_is_minus_log_sigmoid_of_the_scaled_margin():
    t = [torch.tensor([v]) for v in (-1.0, -4.0, -2.0, -2.0)]
    assert float(dpo_loss(*t, beta=0.5)[0]) == pytest.approx(-math.log(_sig(0.5 * 3.0)), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Runs through the training core
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    return {"base": make_base_run(d / "base"), "sft": write_jsonl(d / "sft.jsonl", sft_records()),
            "pairs": write_jsonl(d / "pairs.jsonl", pair_records()), "dir": d}


def test_lora_sft_learns_assistant_tokens_and_checkpoints_only_adapters(files, tmp_path):
    cfg = finetune_config(files["base"], files["sft"], tmp_path / "sft", **{
        "training.objective": "sft", "lora.rank": 4, "lora.targets": ["attn.qkv", "attn.proj", "mlp.fc"],
        "training.max_iters": 12, "training.eval_interval": 12, "training.learning_rate": 1e-2})
    s = train(cfg, quiet=True)
    evals = [r for r in read_metrics(tmp_path / "sft" / "metrics.jsonl") if "val_loss" in r]
    saved = load_file(str(tmp_path / "sft" / "ckpt_last" / "model.safetensors"))
    assert saved and all(lora.is_adapter_key(k) for k in saved)           # adapter-only checkpoint
    # the trained model, loaded back (base + adapters, merged) scores what training reported
    from foundry.checkpoint import load_run
    from foundry.trainer.objectives import OBJECTIVES
    run = load_run(tmp_path / "sft")
    assert not lora.lora_layers(run.model)                                 # merged into a plain GPT
    obj = OBJECTIVES.get("sft")(cfg)
    c2 = obj.prepare(cfg)
    obj.cfg = c2
    data = obj.load_data(c2)
    from contextlib import nullcontext
    assert obj.evaluate(run.model, data, "cpu", nullcontext())["val_loss"] == pytest.approx(s["val_loss"], rel=1e-5)
    base_loss = obj.evaluate(obj.build_model(c2).eval(), data, "cpu", nullcontext())["val_loss"]
    assert evals[-1]["val_loss"] < base_loss                               # held-out loss went down


def test_sft_loss_counts_assistant_tokens_only(files):
    from foundry.trainer.objectives import OBJECTIVES
    cfg = finetune_config(files["base"], files["sft"], files["dir"] / "x", **{"training.objective": "sft"})
    obj = OBJECTIVES.get("sft")(cfg)
    cfg = obj.prepare(cfg)
    data = obj.load_data(cfg)
    tok = data.tokenizer
    x, y, pos, doc = data.train.batch()
    trained = tok.decode([int(t) for t in y[y != -1]])
    assert "apple apple" in trained and "say" not in trained and "user" not in trained
    assert int(pos.max()) < int((doc == doc[0, 0]).sum())                   # positions restart per example


def test_lora_dpo_with_adapters_off_reference_logs_rewards_and_resumes_exactly(files, tmp_path):
    over = {"training.objective": "dpo", "lora.rank": 4, "training.max_iters": 6, "training.learning_rate": 1e-2,
            "training.dpo.beta": 0.5, "training.lr_decay_iters": 6}
    full = train(finetune_config(files["base"], files["pairs"], tmp_path / "full", **over), quiet=True)
    train(finetune_config(files["base"], files["pairs"], tmp_path / "part", **{**over, "training.max_iters": 3}),
          quiet=True)
    resumed = train(finetune_config(files["base"], files["pairs"], tmp_path / "part", **over), quiet=True)
    a, b = (load_file(str(tmp_path / d / "ckpt_last" / "model.safetensors")) for d in ("full", "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == full["val_loss"]
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert all(key in r for r in train_rows), key
    assert rows[0]["data_split"]["train_pairs"] == 20 and rows[0]["data_split"]["val_pairs"] == 4
    ev = [r for r in rows if "val_pref_acc" in r]
    assert ev and ev[-1]["val_margin"] > 0                                  # the policy moved towards chosen


def test_dpo_reference_modes_agree_at_the_start(files):
    """At step 0 the policy equals its reference either way: margin 0, loss log 2."""
    from contextlib import nullcontext

    from foundry.trainer.objectives import OBJECTIVES
    out = {}
    for ref, rank in (("adapters_off", 4), ("copy", 4), ("copy", 0)):
        cfg = finetune_config(files["base"], files["pairs"], files["dir"] / "y", **{
            "training.objective": "dpo", "lora.rank": rank, "training.dpo.reference": ref})
        obj = OBJECTIVES.get("dpo")(cfg)
        cfg = obj.prepare(cfg)
        obj.cfg = cfg
        data = obj.load_data(cfg)
        model = obj.build_model(cfg)
        obj.attach(model, "cpu")
        out[(ref, rank)] = obj.evaluate(model, data, "cpu", nullcontext())
    for ev in out.values():
        assert ev["val_loss"] == pytest.approx(math.log(2), abs=1e-6) and ev["val_margin"] == pytest.approx(0, abs=1e-6)
        assert ev["val_pref_acc"] == out[("copy", 0)]["val_pref_acc"]


def test_dpo_evaluation_computes_the_held_out_reference_once(files):
    """The reference is frozen: a second evaluation reuses the held-out pairs' reference log-probs (no reference
    forward) and, after the policy moved, reports what recomputing them would."""
    from contextlib import nullcontext

    from foundry.trainer.objectives import OBJECTIVES
    cfg = finetune_config(files["base"], files["pairs"], files["dir"] / "z", **{
        "training.objective": "dpo", "lora.rank": 4})
    obj = OBJECTIVES.get("dpo")(cfg)
    obj.cfg = cfg = obj.prepare(cfg)
    data = obj.load_data(cfg)
    model = obj.build_model(cfg)
    obj.attach(model, "cpu")
    calls, ref_logps = [], obj.ref_logps
    obj.ref_logps = lambda x, y: calls.append(1) or ref_logps(x, y)
    obj.evaluate(model, data, "cpu", nullcontext())
    first = len(calls)
    with torch.no_grad():  # move the policy off its reference: B of every adapter away from zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    again = obj.evaluate(model, data, "cpu", nullcontext())
    assert first > 0 and len(calls) == first          # nothing recomputed the second time
    obj._val_ref = None                                  # forget the cache: the same figures, recomputed
    assert obj.evaluate(model, data, "cpu", nullcontext()) == again and again["val_margin"] != 0


def test_rpo_adds_alpha_times_the_chosen_answers_per_token_nll(files):
    """rpo_alpha: each pair's loss is its DPO loss plus alpha times the mean cross-entropy over the chosen answer's
    tokens, computed here from the logits by hand (Pang et al. 2024, eq. 1)."""
    from foundry.trainer.objectives import OBJECTIVES
    cfg = finetune_config(files["base"], files["pairs"], files["dir"] / "rpo", **{
        "training.objective": "dpo", "lora.rank": 4, "training.dpo.rpo_alpha": 0.5})
    obj = OBJECTIVES.get("dpo")(cfg)
    obj.cfg = cfg = obj.prepare(cfg)
    data = obj.load_data(cfg)
    model = obj.build_model(cfg)
    obj.attach(model, "cpu")
    with torch.no_grad():  # policy != reference, so the DPO part is not the constant log 2
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    x, y = obj.collate(data.train, [0, 1, 2])
    with torch.no_grad():
        st = obj.pair_stats(model, (x, y))
        logp = torch.log_softmax(model(x).double(), -1)
    nll = []
    for row in range(3):  # the chosen sequences are the batch's first half
        ids = [(t, int(y[row, t])) for t in range(y.shape[1]) if y[row, t] != -1]
        nll.append(-sum(float(logp[row, t, v]) for t, v in ids) / len(ids))
    ref = st["ref"]
    plain = dpo_loss(st["logps/chosen"], st["logps/rejected"], ref[:3], ref[3:], cfg.training.dpo.beta)
    assert float(plain.std()) > 0
    torch.testing.assert_close(st["nll/chosen"].double(), torch.tensor(nll, dtype=torch.float64), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st["losses"].double(), (plain + 0.5 * torch.tensor(nll)).double(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Bad input, before any model is built
# --------------------------------------------------------------------------------------------------
def test_finetuning_without_a_trained_base_names_the_command(files, tmp_path):
    from foundry.config import ExperimentConfig
    cfg = ExperimentConfig().replace({"lora.rank": 4, "lineage": {"parent": "experiments/baseline.yaml"},
                                      "out_dir": str(tmp_path / "o")})
    with pytest.raises(ConfigError, match="init_from is not set.*python -m foundry.train experiments/baseline.yaml"):
        train(cfg, quiet=True)
    with pytest.raises(ConfigError, match="holds no trained checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.yaml").write_text("{}")
        train(cfg.replace({"init_from": str(tmp_path / "empty")}), quiet=True)


def test_bad_finetuning_data_fails_with_file_and_line(files, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", sft_records(8) + [{"prompt": "hi", "response": ""}] + sft_records(8))
    with pytest.raises(ValueError, match=r"bad\.jsonl:9: field 'response' is empty"):
        train(finetune_config(files["base"], bad, tmp_path / "a", **{"training.objective": "sft"}), quiet=True)
    with pytest.raises(ConfigError, match=r"not preference data .*DPO needs pairs"):
        train(finetune_config(files["base"], files["sft"], tmp_path / "b", **{"training.objective": "dpo"}),
              quiet=True)
    with pytest.raises(ConfigError, match=r"holds preference pairs"):
        train(finetune_config(files["base"], files["pairs"], tmp_path / "c", **{"training.objective": "sft"}),
              quiet=True)
    with pytest.raises(ValueError, match=r"chat_format 'llama3' needs the special tokens \['begin_of_text'"):
        # the base's BPE vocabulary has ChatML's markers; a char-level base would lack them all
        from foundry.data.tokenize import CharTokenizer
        CharTokenizer().fit("abc").save(files["dir"] / "char.json")
        from foundry.data.finetune import Renderer
        from foundry.data.tokenize import load_tokenizer
        Renderer("llama3", load_tokenizer(files["dir"] / "char.json"))
    with pytest.raises(ConfigError, match=r"lora\.targets: 'q_proj' matches none"):
        train(finetune_config(files["base"], files["sft"], tmp_path / "d", **{"training.objective": "sft",
                                                                             "lora.rank": 2, "lora.targets": ["q_proj"]}),
              quiet=True)


def test_dpo_on_the_constitution_file_must_reserve_its_items(files, tmp_path):
    hh = tmp_path / "harmless-base_test.jsonl"
    write_jsonl(hh, [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}] * 12)
    cfg = finetune_config(files["base"], hh, tmp_path / "a", **{"training.objective": "dpo", "data.val_examples": 2})
    with pytest.raises(ConfigError, match="hh_rlhf .*data.reserved"):
        train(cfg, quiet=True)
    s = train(cfg.replace({"data.reserved": 5, "training.max_iters": 2}), quiet=True)
    split = read_metrics(tmp_path / "a" / "metrics.jsonl")[0]["data_split"]
    assert split["reserved"] == 5 and split["train_lines"][0] == 6 and s["val_pairs"] == 2


def test_hh_rlhf_dialogues_split_into_prompt_turns_and_final_answers():
    from foundry.data.finetune import preference_pair
    rec = {"chosen": "\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant: yes, sure",
           "rejected": "\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant: no"}
    p = preference_pair(rec, "f:1", 1)
    assert p.prompt == [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b."},
                        {"role": "user", "content": "c?"}]
    assert (p.chosen, p.rejected) == ("yes, sure", "no")


def test_a_pair_that_does_not_fit_loses_its_prompt_start_then_its_answer_ends_alike():
    from foundry.trainer.objectives import fit_pair

    prompt = list(range(100, 110))                                   # 10 prompt tokens, then the answers

    def seq(ans):
        return prompt + ans, [False] * len(prompt) + [True] * len(ans)

    (cx, cy, rx, ry), cut = fit_pair(seq([1, 2, 3]), seq([4, 5, 6, 7]), T=8)
    assert cut == (True, False)                                      # 9 = 5 prompt tokens (its end) + 4
    assert cx == [105, 106, 107, 108, 109, 1, 2] and cy == [-1, -1, -1, -1, 1, 2, 3] and ry[-4:] == [4, 5, 6, 7]
    (cx, cy, rx, ry), cut = fit_pair(seq(list(range(20))), seq(list(range(1, 21))), T=12)
    assert cut == (True, True) and cx[:6] == rx[:6] == prompt[-6:] and len(cx) == len(rx) == 12  # half the block
    assert fit_pair(seq([1, 2, 3] * 9 + [4]), seq([1, 2, 3] * 9 + [5]), T=12) is None  # same once capped
    assert fit_pair(seq([1, 2]), seq([1, 3]), T=64)[1] == (False, False)


def test_dpo_scores_only_the_final_answer_and_keeps_long_dialogues(files, tmp_path):
    from foundry.trainer.objectives import OBJECTIVES
    turns = "".join(f"\n\nHuman: tell me about the {w} again\n\nAssistant: the {w} is here" for w in
                    ["apple", "river", "stone", "cloud", "green", "seven"] * 2)           # far over 64 tokens
    recs = [{"chosen": turns + f"\n\nHuman: and {i}?\n\nAssistant: yes, sure",
             "rejected": turns + f"\n\nHuman: and {i}?\n\nAssistant: no way"} for i in range(8)]
    cfg = finetune_config(files["base"], write_jsonl(tmp_path / "hh.jsonl", recs), tmp_path / "x",
                          **{"training.objective": "dpo", "data.val_examples": 2})
    obj = OBJECTIVES.get("dpo")(cfg)
    data = obj.load_data(obj.prepare(cfg))
    assert (len(data.train), len(data.val), data.split["skipped"], data.split["prompt_truncated"]) == (6, 2, 0, 8)
    cx, cy, rx, ry, line = data.val[0]
    tok, k = data.tokenizer, cy.index(next(t for t in cy if t != -1))
    assert line == 7 and cx[:k] == rx[:k] and len(cx) <= 64          # one prompt for both, its end kept
    assert "and 6?" in tok.decode(cx[:k]) and "Human: tell me" not in tok.decode(cx[:3])
    assert tok.decode([t for t in cy if t != -1]).startswith("yes, sure")        # the final answer only
    assert tok.decode([t for t in ry if t != -1]).startswith("no way")


def test_a_checkpoint_template_renders_as_transformers_compiles_it():
    from foundry.data.finetune import DataError, TemplateFormat
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
           "{% if loop.index > 2 %}{% break %}{% endif %}<{{ m['role'] }}>{{ m['content'] | tojson }}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    t = TemplateFormat(tpl, type("Tok", (), {"special_tokens": {"eos": "</s>"}})())
    msgs = [{"role": "user", "content": "é"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert t.render(msgs, add_generation_prompt=True) == '<user>"é"</s><assistant>"b"</s><assistant>'  # loop controls
    assert t.segments(msgs[:2]) == [('<user>"é"</s><assistant>', False), ('"b"</s>', True)]
    with pytest.raises(DataError, match="chat template: no system role"):
        t.render([{"role": "system", "content": "s"}])


# --------------------------------------------------------------------------------------------------
# PEFT's format, both directions
# --------------------------------------------------------------------------------------------------
def test_peft_round_trip_both_directions(tmp_path):
    peft = pytest.importorskip("peft")
    import transformers
    from hf_utils import save_tiny_checkpoint, tiny_pair, to_foundry

    hf, ours = tiny_pair("llama")
    base_dir = save_tiny_checkpoint("llama", tmp_path / "base", hf=hf)
    idx = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))

    # foundry -> PEFT: every projection (fused qkv and gate|up included)
    lora.apply_lora(ours, lora.LoRAConfig(rank=4, alpha=8, targets=["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]))
    with torch.no_grad():
        for m in lora.lora_layers(ours).values():
            m.lora_B.normal_(0, 0.1)
    lora.save_peft(ours, tmp_path / "adapter", str(base_dir))
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(base_dir) and conf["r"] == 4
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight" in keys
    pm = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir),
                                        str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs, mine = pm(idx).logits, ours(idx)
    assert (mine - hf(idx).logits).abs().max() > 1e-3                     # the adapters change the output
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)

    # PEFT -> foundry: PEFT's default-like q and v targets (k gets no update) plus the MLP
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    pm2 = peft.get_peft_model(hf2, peft.LoraConfig(r=3, lora_alpha=6, init_lora_weights=False,
                                                   target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])).eval()
    pm2.save_pretrained(str(tmp_path / "peft2"))
    fresh = to_foundry(hf)
    wrapped = lora.load_peft(fresh, tmp_path / "peft2")
    assert "blocks.0.attn.qkv" in wrapped and "blocks.0.attn.proj" not in wrapped
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), pm2(idx).logits, rtol=1e-5, atol=1e-5)
        k = fresh.blocks[0].attn.qkv
        assert k.lora_B[k.splits[0]:k.splits[0] + k.splits[1]].abs().sum() == 0   # k: no adapter, no update


# --------------------------------------------------------------------------------------------------
# Mutation types
# --------------------------------------------------------------------------------------------------
def test_lora_mutations_write_the_readme_experiment_and_point_at_the_parent_run(tmp_path):
    from foundry.config import load_experiment
    from foundry.mutate import MutationError, apply_mutation, write_mutant
    parent = load_experiment("experiments/baseline.yaml")
    child = apply_mutation(parent, "lora_rank", "16", parent="experiments/baseline.yaml")
    path = write_mutant(child, tmp_path)
    assert path.name == "lora_r16.yaml"
    c = load_experiment(path)
    assert c.lora.rank == 16 and c.init_from == parent.out_dir and c.out_dir == "runs/lora_r16"
    grand = apply_mutation(c, "lora_alpha", "x2")
    assert grand.lora.alpha == 32 and grand.init_from == parent.out_dir       # still the trained base
    assert list(apply_mutation(c, "lora_targets", "all").lora.targets) == ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
    assert apply_mutation(c, "lora_dropout", "0.05").lora.dropout == 0.05
    with pytest.raises(MutationError, match="mutate lora_rank first"):
        apply_mutation(parent, "lora_alpha", "32")
    dpo = apply_mutation(parent, "loss", "dpo")
    assert dpo.training.objective == "dpo" and dpo.init_from == parent.out_dir
    assert apply_mutation(parent, "chat_format", "llama3").data.chat_format == "llama3"
    with pytest.raises(MutationError, match="valid variants"):
        apply_mutation(parent, "chat_format", "vicuna")


def test_a_lora_sft_run_on_a_hf_base_exports_to_peft_and_merged_hf(tmp_path):
    """The checkpoint's own chat template renders the examples; the run's adapters, exported in PEFT's format,
    give the logits of the run loaded back (base + merged adapters); the merged export loads in transformers."""
    peft = pytest.importorskip("peft")
    import transformers
    from hf_utils import save_tiny_checkpoint

    from foundry.checkpoint import load_run
    from foundry.cli.lora import main as lora_cli
    from foundry.config import from_dict

    base = save_tiny_checkpoint("llama", tmp_path / "base")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(16))
    cfg = from_dict({"init_from": str(base), "out_dir": str(tmp_path / "run"), "model_args": {"block_size": 64},
                     "lora": {"rank": 4, "targets": ["attn.qkv", "mlp.fc"]},
                     "data": {"path": str(data), "val_examples": 4},
                     "training": {"objective": "sft", "max_iters": 4, "eval_interval": 4, "log_interval": 2,
                                  "warmup_iters": 1, "learning_rate": 1e-2, "batch_size": 2, "sample_tokens": 0,
                                  "device": "cpu", "dtype": "float32", "num_threads": 1}})
    train(cfg, quiet=True)
    assert json.loads(json.dumps(read_metrics(tmp_path / "run" / "metrics.jsonl")[0]))["data"] == "sft.jsonl"
    assert lora_cli(["peft", str(tmp_path / "run"), str(tmp_path / "peft")]) == 0
    assert lora_cli(["merged", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    ours = load_run(tmp_path / "run").model
    idx = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(idx)
        pm = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base),
                                            str(tmp_path / "peft")).eval()
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        plain = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
        assert (mine - plain(idx).logits).abs().max() > 1e-4                  # training moved the adapters
        torch.testing.assert_close(pm(idx).logits, mine, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merged(idx).logits, mine, rtol=1e-4, atol=1e-4)
