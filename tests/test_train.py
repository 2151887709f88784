"""End-to-end training on CPU with tiny models: run directory, metrics, evaluation, extension, refusals,
non-finite loss, gradient accumulation, loggers and the command line."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foundry.checkpoint import load_run, load_state
from foundry.config import ConfigError
from foundry.data.dataset import load_data
from foundry.train import evaluate, main, read_metrics, train

REPO = Path(__file__).resolve().parents[1]
from train_helpers import tiny_config, write_char_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_char_dataset(tmp_path_factory.mktemp("data") / "shakespeare_char")


def weights(run_dir):
    return load_file(str(run_dir / "ckpt_last" / "model.safetensors"))


def test_run_directory_metrics_and_summary(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(data_dir, out), quiet=True)
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "sample.txt", "summary.json"):
        assert (out / name).is_file(), name
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["event"] == "start"
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["iter"] for r in eval_rows] == [10, 20]
    for r in train_rows:
        assert {"loss", "lr", "tokens_per_sec", "ms_per_iter", "grad_norm"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["tokens_per_sec"] > 0
    vocab = load_data(data_dir).vocab_size
    assert train_rows[0]["loss"] < math.log(vocab) + 0.5 and train_rows[-1]["loss"] < train_rows[0]["loss"]
    # character data of ASCII text: one byte per token, so bits per byte = nats per token / ln 2
    ev = eval_rows[-1]
    assert ev["val_bpb"] == pytest.approx(ev["val_loss"] / math.log(2), rel=1e-9)
    assert ev["val_tokens"] == 2 * 4 * 32  # eval_iters x batch_size windows of block_size
    assert summary["val_loss"] == pytest.approx(ev["val_loss"]) and summary["out_dir"] == str(out)
    assert summary["best_val_loss"] == min(r["val_loss"] for r in eval_rows)
    assert json.loads((out / "summary.json").read_text())["val_bpb"] == pytest.approx(summary["val_bpb"])
    run = load_run(out)  # what evaluation and sweeps use
    assert run.config.model_args.vocab_size == vocab and load_state(out / "ckpt_last")["iter"] == 20


def test_evaluate_is_cross_entropy_over_the_declared_windows(data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(data_dir, out, **{"training.max_iters": 5, "training.warmup_iters": 2, "training.eval_iters": 3})
    train(cfg, quiet=True)
    run = load_run(out, which="last")
    data = load_data(data_dir)
    got = evaluate(run.model, data, run.config, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    T, n = 32, 3 * 4
    ids = torch.from_numpy(np.asarray(data.val[: n * T + 1], dtype=np.int64))
    x, y = ids[:-1].view(n, T), ids[1:].view(n, T)
    with torch.no_grad():
        logits = run.model(x)
    nats = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum").item()
    assert got["val_loss"] == pytest.approx(nats / y.numel(), rel=1e-6)
    assert got["val_tokens"] == y.numel()


def test_extending_a_run_equals_running_it_once(data_dir, tmp_path):
    """Successive halving re-runs into the same out_dir with a larger max_iters: same result as one long run."""
    fixed = {"training.lr_decay_iters": 20}
    once = tmp_path / "once"
    train(tiny_config(data_dir, once, **fixed), quiet=True)
    grown = tmp_path / "grown"
    first = train(tiny_config(data_dir, grown, **fixed, **{"training.max_iters": 10}), quiet=True)
    assert first["iters"] == 10
    second = train(tiny_config(data_dir, grown, **fixed), quiet=True)
    assert second["iters"] == 20
    a, b = weights(once), weights(grown)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "ms_per_iter")} for r in rows]
    assert strip(read_metrics(once / "metrics.jsonl"))[1:] == strip(read_metrics(grown / "metrics.jsonl"))[1:]
    assert "max_iters: 20" in (grown / "config.yaml").read_text()  # the run directory describes the longer run


def test_a_different_experiment_in_the_same_out_dir_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, **{"training.max_iters": 5, "training.warmup_iters": 2}), quiet=True)
    with pytest.raises(FileExistsError, match="different experiment"):
        train(tiny_config(data_dir, out, **{"training.max_iters": 5, "training.warmup_iters": 2,
                                            "training.learning_rate": 1e-2}), quiet=True)


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, **{"training.max_iters": 10}), quiet=True)
    before = {p.name: p.read_bytes() for p in (out / "ckpt_last").iterdir()}

    from foundry.modules.loss import CrossEntropy
    original, calls = CrossEntropy.forward, {"n": 0}

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = original(self, logits, targets)
        return loss * float("nan") if calls["n"] >= 3 else loss  # the 3rd step after resuming: iteration 13

    monkeypatch.setattr(CrossEntropy, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite .* iteration 13 .*intact"):
        train(tiny_config(data_dir, out, **{"training.max_iters": 20}), quiet=True)
    after = {p.name: p.read_bytes() for p in (out / "ckpt_last").iterdir()}
    assert after == before
    assert load_state(out / "ckpt_last")["iter"] == 10


def test_gradient_accumulation_matches_the_full_batch(data_dir, tmp_path):
    """batch 2 x 2 accumulation steps trains on the same rows as batch 4 in one step: the same run."""
    full = train(tiny_config(data_dir, tmp_path / "full", **{"training.max_iters": 10}), quiet=True)
    acc = train(tiny_config(data_dir, tmp_path / "acc", **{"training.max_iters": 10, "training.batch_size": 2,
                                                           "training.gradient_accumulation_steps": 2,
                                                           "training.eval_iters": 4}), quiet=True)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert acc["val_loss"] == pytest.approx(full["val_loss"], rel=1e-4)


def test_sequential_order_and_bf16_autocast_train(data_dir, tmp_path):
    s = train(tiny_config(data_dir, tmp_path / "run", **{"training.max_iters": 5, "training.warmup_iters": 2, "data.order": "sequential",
                                                         "training.dtype": "bfloat16"}), quiet=True)
    assert math.isfinite(s["val_loss"])
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["dtype"] == "bfloat16"


def test_loggers_are_optional_extras(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path / "run", **{"training.max_iters": 5, "training.warmup_iters": 2})
    with pytest.raises(ConfigError, match="unknown logger"):
        train(cfg, quiet=True, loggers=("mlflow",))
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
            train(cfg, quiet=True, loggers=("tensorboard",))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any work
    else:
        train(cfg, quiet=True, loggers=("tensorboard",))
        assert any((tmp_path / "run" / "tb").iterdir())


def test_tensorboard_and_wandb_mirror_the_metrics(data_dir, tmp_path, monkeypatch):
    """Both extras at once (installed by the test extra): the TensorBoard events hold exactly metrics.jsonl's
    scalars at the same steps, and W&B writes an offline run (no network) that carries the same metric names."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)  # foundry must choose offline by itself
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, **{"training.max_iters": 6, "training.eval_interval": 3,
                                        "training.log_interval": 2}), quiet=True, loggers=("tensorboard", "wandb"))
    rows = read_metrics(out / "metrics.jsonl")
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    for key in ("loss", "lr", "val_loss", "val_bpb"):
        want = [(r["iter"], r[key]) for r in rows if key in r]
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "W&B did not write exactly one offline run"
    # wandb's finish() returns before its separate wandb-core process has flushed the run file (seen under a
    # loaded machine: only the file's 7-byte header at first, the whole run a moment later)
    deadline = time.monotonic() + 30
    while not (b"val_bpb" in (blob := runs[0].read_bytes()) and b"tokens_per_sec" in blob) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"val_bpb" in blob and b"tokens_per_sec" in blob


def test_command_line(data_dir, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text("base_model: v1\nmodel_args: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}\n")
    sets = ["--set", f"data.path={data_dir}", "--set", f"out_dir={tmp_path / 'run'}", "--set", "training.max_iters=4",
            "--set", "training.eval_interval=2", "--set", "training.log_interval=1", "--set", "training.eval_iters=1",
            "--set", "training.batch_size=2", "--set", "training.sample_tokens=4", "--set", "training.warmup_iters=1"]
    assert main([str(exp), *sets]) == 0
    printed = capsys.readouterr().out
    assert "iter      4/4" in printed and "tok/s" in printed and "ETA" in printed and "val bpb" in printed
    assert main([str(exp), *sets, "--set", "training.max_iters=0"]) == 2
    assert "training.max_iters: must be >= 1" in capsys.readouterr().err


def test_cli_runs_are_recorded_in_the_store(tmp_path, monkeypatch):
    """Every run is recorded (issue 6): `python -m foundry.train` writes a row, done with its metrics."""
    from foundry.store import Store
    from foundry.train import main

    db = tmp_path / "store.sqlite"
    monkeypatch.setenv("FOUNDRY_STORE", str(db))
    argv = [str(REPO / "experiments" / "baseline.yaml"), "--quiet", "--set", f"out_dir={tmp_path / 'run'}"]
    for s in ("model_args.n_layer=1", "model_args.n_embd=32", "model_args.block_size=16", "training.max_iters=2",
              "training.warmup_iters=0",
              "training.eval_iters=1", "training.batch_size=2", "training.sample_tokens=0"):
        argv += ["--set", s]
    assert main(argv) == 0
    rows = Store(db).runs()
    assert rows, "no run recorded"
    assert rows[-1]["status"] == "done" and rows[-1]["metrics"]["val_loss"] > 0


def test_resume_refuses_a_changed_experiment_but_allows_execution_changes(tmp_path):
    from foundry.config import from_dict

    base = from_dict({"model_args": dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
                      "training": dict(max_iters=2, eval_interval=2, eval_iters=1, batch_size=2, sample_tokens=0,
                                       warmup_iters=0),
                      "out_dir": str(tmp_path / "run")})
    train(base, quiet=True)
    more = base.replace({"training.max_iters": 4, "training.num_threads": 1, "training.log_interval": 1})
    assert train(more, quiet=True)["iters"] == 4
    with pytest.raises(FileExistsError, match="training.learning_rate"):
        train(more.replace({"training.learning_rate": 5e-4}), quiet=True)


def test_dtype_auto_follows_the_hardware():
    """`dtype: auto` is bf16 only where bf16 has a hardware path and was measured to pay: CUDA with bf16, a
    CPU with AMX tiles or AVX-512 BF16 for a model at least 256 wide or 256 long; each choice says why (flag
    sets, not this machine)."""
    from foundry import train as T
    from foundry.config import ModelConfig
    from foundry.hostcpu import HostCPU

    cpu = torch.device("cpu")
    narrow, wide = ModelConfig(n_embd=128, block_size=64), ModelConfig(n_embd=384, n_head=6, block_size=64)
    long_, tiny = ModelConfig(n_embd=128, block_size=256), ModelConfig(n_embd=64, n_head=2, block_size=64)
    avx2 = HostCPU("AVX2", "AuthenticAMD", 25, frozenset({"avx2", "fma"}))
    zen = HostCPU("AVX512", "AuthenticAMD", 26, frozenset({"avx2", "avx512f", "avx512_bf16"}))
    no_bf16 = HostCPU("AVX512", "GenuineIntel", 6, frozenset({"avx2", "avx512f"}))          # Skylake-SP, Ice Lake
    masked = HostCPU("AVX2", "AuthenticAMD", 26, frozenset({"avx2", "avx512f", "avx512_bf16"}))  # ATEN_CPU_CAPABILITY=avx2
    amx = HostCPU("AVX512", "GenuineIntel", 6, frozenset({"avx512f", "avx512_bf16", "amx_bf16"}), amx=True)

    def pick(hw, mc=None):
        return T.dtype_choice("auto", cpu, mc, hw)

    for hw in (avx2, no_bf16, masked):
        assert pick(hw, wide)[0] == torch.float32 == pick(hw)[0]
        assert "without AVX-512 BF16 or AMX" in pick(hw, wide)[1]
    assert pick(zen, wide)[0] == pick(zen, long_)[0] == pick(zen)[0] == torch.bfloat16
    assert "AVX-512 BF16 CPU without AMX, 384 wide" in pick(zen, wide)[1]
    assert pick(zen, narrow)[0] == pick(zen, tiny)[0] == torch.float32
    assert "128 wide and block 64" in pick(zen, narrow)[1]
    assert pick(amx, wide)[0] == torch.bfloat16 == pick(amx, long_)[0] == pick(amx)[0]
    assert pick(amx, narrow)[0] == torch.float32
    assert "128 wide and block 64" in pick(amx, narrow)[1]
    assert T.dtype_choice("float32", cpu, wide, zen)[0] == torch.float32  # an explicit choice always wins
    assert T.dtype_choice("bfloat16", cpu, narrow, avx2) == (torch.bfloat16, "training.dtype=bfloat16")


def test_host_cpu_reads_vendor_family_and_flags():
    from foundry.hostcpu import parse_cpuinfo

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
            "\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert parse_cpuinfo(text) == ("AuthenticAMD", 26, frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    assert parse_cpuinfo("") == ("", None, frozenset())


def test_omp_threads_sleep_only_on_a_busy_cpu(monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE is set when others' CPU use plus the run's threads exceed the cores, before
    torch is imported; an idle machine, the user's own setting, or an already-loaded torch leave it alone."""
    import os
    import sys

    from foundry import train as T

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(var, "")  # recorded, so the teardown restores this process's own setting
        monkeypatch.delenv(var)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delitem(sys.modules, "torch")  # as in `python -m foundry.train` before it imports torch
    assert T.tune_omp_wait(2, busy=0.1) is None and "OMP_WAIT_POLICY" not in os.environ
    assert T.tune_omp_wait(1, busy=1.9) is None and "OMP_WAIT_POLICY" not in os.environ  # no barrier to wait at
    why = T.tune_omp_wait(None, busy=1.2)  # num_threads unset: torch takes every core
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "use 1.2 of 2 cores" in why
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert T.tune_omp_wait(2, busy=2.0) is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert T.tune_omp_wait(2, busy=2.0) is None and "OMP_WAIT_POLICY" not in os.environ  # libgomp already loaded
    assert 0.0 <= T.cpu_busy_elsewhere(0.05) <= 2.0 + 1e-9  # this machine's own reading, in cores


def test_eager_adamw_is_torchs_adamw_without_importing_dynamo(tmp_path):
    """EagerAdamW (eager runs) steps exactly as torch's fused AdamW, state dicts included, and a run's
    optimiser work (build, steps, zero_grad, state_dict round trip, a checkpoint's capture) imports no
    torch._dynamo."""
    import subprocess
    import sys

    from foundry.optim import EagerAdamW

    out = []
    for cls in (torch.optim.AdamW, EagerAdamW):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        opt = cls([{"params": [m[0].weight, m[2].weight], "weight_decay": 0.1},
                   {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.99), fused=True)
        for i in range(4):
            m(torch.randn(5, 8, generator=torch.Generator().manual_seed(i))).square().sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i == 1:
                opt.load_state_dict(opt.state_dict())
        out.append([p.detach().clone() for p in m.parameters()] + [opt.state_dict()["state"][0]["exp_avg_sq"]])
    for a, b in zip(*out):
        assert torch.equal(a, b)
    code = ("import sys, yaml\nfrom foundry.config import from_dict\nfrom foundry.trainer.core import build_run, "
            "train_step\ncfg = from_dict(yaml.safe_load('''\nbase_model: v1\nmodel_args: {n_layer: 1, n_head: 2, "
            "n_embd: 32, block_size: 16}\ntraining: {max_iters: 3, warmup_iters: 1, batch_size: 2, device: cpu}\n"
            f"out_dir: {tmp_path}\n'''))\nrun = build_run(cfg, 'cpu')\nloss_of = run.loss_of()\nfor _ in range(2):\n"
            "    train_step(run.model, run.optimizer, run.sampler.next_batch, loss_of, run.accum)\n"
            "run.optimizer.load_state_dict(run.optimizer.state_dict())\n"
            "from foundry.trainer.core import TrainState\nTrainState().capture(run)\n"
            "print(type(run.optimizer).__name__, 'torch._dynamo' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["EagerAdamW", "False"]


def test_named_optimizer_state_is_torchs_layout_and_round_trips(tmp_path):
    """A single-process run's checkpointed optimiser state (built without torch.distributed.checkpoint) is
    exactly what torch's get_optimizer_state_dict gives (tied embedding included), and loading it back
    gives the state torch's set_optimizer_state_dict gives."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    from foundry import distributed as D
    from foundry.config import ModelConfig, TrainingConfig
    from foundry.model import GPT
    from foundry.optim import build_optimizer

    def made():
        torch.manual_seed(0)
        m = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65))
        return m, build_optimizer(m, TrainingConfig(), "cpu")

    m, opt = made()
    assert D._named_optimizer_state(m, opt) is None  # no state yet: torch's function would initialise it
    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        m(x, x)[0].backward()
        opt.step()
        opt.zero_grad()
    mine = D.full_optimizer_state(m, opt, "none")
    ref = get_optimizer_state_dict(m, opt, options=StateDictOptions(full_state_dict=True))
    assert list(mine["state"]) == list(ref["state"]) and mine["param_groups"] == ref["param_groups"]
    assert all(torch.equal(mine["state"][k][j], ref["state"][k][j]) for k in ref["state"] for j in ref["state"][k])
    loaded = []
    for load in (lambda mm, oo: D._load_named_optimizer_state(mm, oo, mine),
                 lambda mm, oo: set_optimizer_state_dict(mm, oo, ref, options=StateDictOptions(full_state_dict=True))):
        m2, opt2 = made()
        assert load(m2, opt2) in (True, None)
        loaded.append(opt2.state_dict())
    a, b = loaded
    lists = [[{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in d["param_groups"]]
             for d in loaded]  # torch's loader turns the betas tuple into a list; a fresh optimiser has a tuple
    assert lists[0] == lists[1] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in b["state"] for k in b["state"][i])


def test_onednn_linear_is_the_same_layer_and_follows_the_rule(monkeypatch):
    """OneDNNLinear (fp32 CPU GEMMs on oneDNN) gives F.linear's outputs and gradients to fp32 rounding, keeps
    the module's parameters and state dict, falls back to F.linear under autocast, leaves subclasses alone;
    the rule picks it on AMD's AVX-512 only (flag sets, not this machine)."""
    from foundry.cpugemm import OneDNNLinear, available, onednn_linear_rule, use_onednn_linears
    from foundry.hostcpu import HostCPU

    flags = frozenset({"avx2", "avx512f", "avx512_bf16"})
    assert onednn_linear_rule(HostCPU("AVX512", "AuthenticAMD", 26, flags))[0] is available()
    for cpu in (HostCPU("AVX512", "GenuineIntel", 6, flags), HostCPU("AVX2", "AuthenticAMD", 25, frozenset({"avx2"})),
                HostCPU("AVX512", "", None, flags)):
        assert onednn_linear_rule(cpu)[0] is False
    if not available():
        pytest.skip("this torch has no oneDNN linear")
    import foundry.cpugemm as G

    monkeypatch.setattr(G, "ONEDNN_MIN_MACS", 0)  # these layers are small: send them to oneDNN all the same
    calls = []
    real = G._Linear.apply
    monkeypatch.setattr(G._Linear, "apply", lambda *a: calls.append(1) or real(*a))

    class Sub(torch.nn.Linear):
        pass

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 8, bias=False), Sub(8, 8))
    new = torch.nn.Sequential(*[type(m)(m.in_features, m.out_features, bias=m.bias is not None)
                                if isinstance(m, torch.nn.Linear) else m for m in ref])
    new.load_state_dict(ref.state_dict())
    assert use_onednn_linears(new) == 2
    assert [type(m) for m in new] == [OneDNNLinear, torch.nn.GELU, OneDNNLinear, Sub]
    assert new.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ya, yb = ref(xs[0]), new(xs[1])
    torch.testing.assert_close(yb, ya, atol=1e-5, rtol=1e-5)
    up = torch.randn_like(ya)
    (ya * up).sum().backward()
    (yb * up).sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-5, rtol=1e-5)
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2  # the two plain layers went through oneDNN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert new(x).dtype == torch.bfloat16  # autocast's own linear, not the fp32 GEMM
    monkeypatch.setattr(G, "ONEDNN_MIN_MACS", 1 << 22)
    new(x)
    assert len(calls) == 2  # below the size where oneDNN pays: F.linear
