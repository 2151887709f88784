"""Data-parallel training under torchrun on CPU (gloo): DDP and FSDP2 follow the single-process loss curve at
the same global batch, rank 0 alone writes, and checkpoints load in any mode.

Tolerance: the three runs train on exactly the same rows (the samplers partition one global stream), so they
differ only by the order of floating-point reductions; losses must agree within 1e-4 (absolute, nats) over
20 iterations and the weights within 1e-4."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundry.checkpoint import load_run, load_state
from foundry.config import ConfigError
from foundry.distributed import choose_mode
from foundry.train import read_metrics, train
from train_helpers import tiny_config, write_char_dataset

REPO = Path(__file__).resolve().parents[1]
# eval_iters 3: three evaluation batches dealt to two ranks, so rank 1 runs the zero-weight padding forward
RUN = {"training.max_iters": 20, "training.eval_interval": 10, "training.log_interval": 1, "training.eval_iters": 3,
       "training.sample_tokens": 8, "training.batch_size": 4, "training.lr_decay_iters": 20}
TOL = 1e-4


def test_auto_rule():
    G = 1_000_000_000
    assert choose_mode("auto", 1, "cuda", 10 * G, G) == "none"          # one device: no wrapping
    assert choose_mode("auto", 2, "cpu", 10 * G, G) == "ddp"            # several CPU processes: DDP on gloo
    assert choose_mode("auto", 8, "cuda", G - 1, G) == "ddp"            # several GPUs, < 1B
    assert choose_mode("auto", 8, "cuda", G, G) == "fsdp"               # several GPUs, >= 1B
    assert choose_mode("fsdp", 2, "cpu", 10, G) == "fsdp" and choose_mode("ddp", 1, "cpu", 10, G) == "none"
    with pytest.raises(ConfigError, match="unsynchronised"):
        choose_mode("none", 2, "cpu", 10, G)


def torchrun(exp: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foundry.train",
           str(exp), *sets]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def curve(run_dir):
    return {r["iter"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process run and one 2-process torchrun run per mode, shared by the tests below."""
    root = tmp_path_factory.mktemp("dist")
    data = write_char_dataset(root / "data")
    single = root / "single"
    train(tiny_config(data, single, **RUN), quiet=True)
    stdout = {}
    for mode in ("ddp", "fsdp"):
        exp = root / f"{mode}.yaml"
        exp.write_text(tiny_config(data, root / mode, **RUN, **{"training.distributed": mode}).to_yaml())
        stdout[mode] = torchrun(exp).stdout
    return root, data, single, stdout


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_follows_the_single_process_curve(runs, mode):
    root, data, single, stdout = runs
    out = root / mode
    assert f"2 processes ({mode})" in stdout[mode] and stdout[mode].count("foundry:") == 1  # rank 0 alone prints
    start = read_metrics(out / "metrics.jsonl")[0]
    assert start["world_size"] == 2 and start["distributed"] == mode
    a, b = curve(single), curve(out)
    assert list(a) == list(b) == list(range(1, 21))
    assert max(abs(a[i] - b[i]) for i in a) < TOL, {i: (a[i], b[i]) for i in a}
    # evaluation is sharded over the ranks and all-reduced: the same windows, the same numbers
    ev_a, ev_b = ([r for r in read_metrics(d / "metrics.jsonl") if "val_loss" in r] for d in (single, out))
    assert [r["iter"] for r in ev_a] == [r["iter"] for r in ev_b] == [10, 20]
    for ra, rb in zip(ev_a, ev_b):
        assert ra["val_tokens"] == rb["val_tokens"] == 3 * 4 * 32
        assert abs(ra["val_loss"] - rb["val_loss"]) < TOL and abs(ra["val_bpb"] - rb["val_bpb"]) < TOL
    wa = load_file(str(single / "ckpt_last" / "model.safetensors"))
    wb = load_file(str(out / "ckpt_last" / "model.safetensors"))
    assert wa.keys() == wb.keys()  # full, unsharded weights, tied weight once
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=TOL, msg=k)
    assert len(load_state(out / "ckpt_last")["sampler"]) == 2
    assert not list(out.glob("ckpt_last.tmp*")) and (out / "sample.txt").is_file()
    run = load_run(out)  # loads in a plain single process
    assert run.config.training.distributed == mode


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_torchrun_checkpoint_is_extended_by_one_process(runs, mode):
    """A 2-process run's checkpoint (20 iterations) is extended to 26 by a single process: the data order
    continues exactly (the samplers' row counter is global), so it follows the single-process run extended
    the same way."""
    root, data, single, _ = runs
    curves = {}
    for name, src in (("single", single), (mode, root / mode)):
        out = root / f"{name}_extended_{mode}"
        shutil.copytree(src, out)
        sets = {**RUN, "training.max_iters": 26, **({} if name == "single" else {"training.distributed": mode})}
        cfg = tiny_config(data, out, **sets)
        train(cfg, quiet=True)
        curves[name] = curve(out)
    a, b = curves["single"], curves[mode]
    assert list(b) == list(range(1, 27)) and max(abs(a[i] - b[i]) for i in a) < TOL
