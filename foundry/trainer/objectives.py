"""Training objectives: what a batch is, how its loss is computed, how validation scores it.

The one thing that varies between trainers (`training.objective`):

    lm    next-token prediction on windows of a token stream (pretraining; nanoGPT's batches)
    sft   supervised finetuning: chat-rendered examples packed into rows, loss on assistant tokens only
    dpo   direct preference optimisation on (prompt, chosen, rejected) pairs against a frozen reference

An objective is a small class registered by name; the core (`trainer/core.py`) calls its hooks:
load_data(cfg) -> data, build_model(cfg) -> module, attach(model, device), sampler(data, rank, world),
to_device(batch, device), loss(model, batch) -> (loss, parts), evaluate(...) -> {"val_loss", ...},
tokens_per_row(), checkpoint_weights(model, weights).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from foundry.config import ConfigError, ExperimentConfig
from foundry.registry import Registry

OBJECTIVES: Registry = Registry("objective")


# --------------------------------------------------------------------------------------------------
# Validation of a language model over fixed windows
# --------------------------------------------------------------------------------------------------
def evaluate_windows(model, data, cfg: ExperimentConfig, device, ctx, info=None) -> dict:
    """Validation loss (nats/token, plain cross-entropy) and bits per byte over a fixed, declared set of
    windows: the first eval_iters x batch_size non-overlapping block_size windows of the validation split
    (all of it when shorter). Bits per byte = total nats / ln 2 / total UTF-8 bytes of the predicted tokens,
    so runs with different tokenizers compare.

    Under torchrun (`info`, a distributed.DistInfo with world_size > 1) the batches are dealt round-robin to
    the ranks and the float64 sums all-reduced, so each rank evaluates 1/world_size of the windows and every
    rank gets the single-process result (the same batches; only the order of the float64 sum differs). A
    rank with one batch fewer runs one extra forward with zero weight, because an FSDP-sharded model's
    forward is a collective that every rank must enter the same number of times."""
    from foundry.data.dataset import eval_batches

    T, B = cfg.model_args.block_size, cfg.training.batch_size
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    byte_len = data.byte_lengths().to(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, bytes, tokens

    def add(x, y, weight: float) -> None:
        x, y = x.to(device), y.to(device)
        with ctx, torch.no_grad():
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum")
        sums.add_(torch.stack([nats.double(), byte_len[y].sum(), torch.full((), float(y.numel()), dtype=torch.float64,
                                                                             device=device)]), alpha=weight)

    first, done, n_batches = None, 0, 0
    for i, (x, y) in enumerate(eval_batches(data.val, T, cfg.training.eval_iters * B, B)):
        first = (x, y) if first is None else first
        n_batches += 1
        if i % world == rank:
            add(x, y, 1.0)
            done += 1
    if first is not None and done < -(-n_batches // world):
        add(*first, 0.0)  # a padding forward: the collectives stay matched, nothing is counted
    model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    nats, total_bytes, total_tokens = (float(v) for v in sums)
    if total_tokens == 0:
        raise ValueError(f"validation split of {len(data.val)} tokens is shorter than one block of {T}")
    return {"val_loss": nats / total_tokens, "val_bpb": nats / math.log(2) / max(total_bytes, 1.0),
            "val_tokens": int(total_tokens)}


# --------------------------------------------------------------------------------------------------
# The objectives
# --------------------------------------------------------------------------------------------------
class Objective:
    """Base: a GPT of cfg.model_args with the configured token loss, from init_from's weights when set, wrapped by
    LoRA when lora.rank > 0 (then only the adapters train and checkpoints hold only them)."""

    name = "?"
    base = None

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def prepare(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """Resolve the starting weights (before any data is read); the experiment takes the base's architecture."""
        self.base = resolve_base(cfg)
        return with_base_architecture(cfg, self.base)

    def build_model(self, cfg: ExperimentConfig) -> nn.Module:
        from foundry.model import GPT
        from foundry.modules import LOSS

        model = GPT(cfg.model_args, loss_fn=LOSS.get(cfg.training.loss)(cfg.training))
        if self.base is not None:
            load_base_weights(model, self.base)
        if cfg.lora.rank > 0:
            from foundry import lora

            lora.apply_lora(model, cfg.lora)
        return model

    def attach(self, model: nn.Module, device) -> None:
        """Called once the model is on its device (e.g. DPO's reference)."""

    def to_device(self, batch, device):
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def tokens_per_row(self) -> int:
        return self.cfg.model_args.block_size

    def describe(self, data) -> str:
        if hasattr(data, "describe"):
            return data.describe()
        return (f"{data.name} ({len(data.train):,} train / {len(data.val):,} val tokens, vocab {data.vocab_size})")

    def checkpoint_weights(self, model: nn.Module, weights: dict) -> dict:
        """The tensors a checkpoint stores: all of them, or under LoRA the adapters alone (the base is init_from)."""
        if self.cfg.lora.rank > 0:
            from foundry.lora import is_adapter_key

            return {k: v for k, v in weights.items() if is_adapter_key(k)}
        return weights

    def load_checkpoint(self, model: nn.Module, ckpt) -> None:
        """Weights of a checkpoint this objective wrote, into a model built by build_model."""
        if self.cfg.lora.rank > 0:
            from safetensors.torch import load_file

            from foundry.lora import load_adapter_state

            load_adapter_state(model, load_file(str(Path(ckpt) / "model.safetensors")), str(ckpt))
            return
        from foundry.checkpoint import load_weights

        load_weights(model, ckpt)


@OBJECTIVES.register("lm")
class LanguageModelling(Objective):
    """Next-token cross-entropy (or the configured token loss) on windows of the training split."""

    name = "lm"

    def load_data(self, cfg: ExperimentConfig):
        from foundry.data.dataset import load_data

        data = load_data(cfg.data.path)
        check_base_tokenizer(data, self.base)
        return data

    def sampler(self, data, rank: int, world_size: int):
        from foundry.data.sampler import make_sampler

        return make_sampler(data, self.cfg, rank, world_size)

    def loss(self, model: nn.Module, batch):
        x, y = batch
        loss, info = model(x, y)
        return loss, {"aux_loss": info.get("aux_loss")}

    def evaluate(self, model, data, device, ctx, info=None) -> dict:
        return evaluate_windows(model, data, self.cfg, device, ctx, info)


def load_teacher(spec: str, device) -> nn.Module:
    """A frozen model to learn from: a foundry run or checkpoint directory, else a zoo name or Hugging Face
    checkpoint directory (foundry.zoo)."""
    from pathlib import Path

    from foundry.checkpoint import find_checkpoint, load_run

    p = Path(spec)
    if p.is_dir() and any(find_checkpoint(c) for c in (p, p / "ckpt_best", p / "ckpt_last")):
        return load_run(p, device).model
    from foundry.zoo import load_pretrained

    return load_pretrained(spec, device=device).model


@OBJECTIVES.register("distill")
class Distillation(LanguageModelling):
    """Next-token training against a frozen teacher (Hinton et al. 2015): (1 - alpha) x cross-entropy +
    alpha x T^2 x KL(teacher_T || student_T) per token, at temperature T (training.distill). The same windows
    as `lm`; validation is plain cross-entropy, so distilled and plain runs compare. foundry.surgery heals a
    mutated model this way, its parent as the teacher."""

    name = "distill"

    def attach(self, model: nn.Module, device) -> None:
        self.teacher = load_teacher(self.cfg.training.distill.teacher, device).eval()
        self.teacher.requires_grad_(False)
        if self.teacher.cfg.vocab_size != self.cfg.model_args.vocab_size:
            raise ConfigError(f"training.distill.teacher {self.cfg.training.distill.teacher} has a vocabulary of "
                              f"{self.teacher.cfg.vocab_size} tokens, the student {self.cfg.model_args.vocab_size}; "
                              f"distillation compares next-token distributions, so they must share a tokenizer")

    def loss(self, model: nn.Module, batch):
        x, y = batch
        d = self.cfg.training.distill
        plain = getattr(model, "module", model)        # DDP keeps the GPT in .module
        logits = model(x)                              # (B, T, V)
        ce = plain.loss_fn(logits, y)
        with torch.no_grad():
            t_logits = self.teacher(x)
        T = d.temperature
        log_s = torch.nn.functional.log_softmax(logits.float() / T, dim=-1)
        log_t = torch.nn.functional.log_softmax(t_logits.float() / T, dim=-1)
        keep = (y != -1).float()                       # ignored targets (padding) carry no KL either
        kl = ((log_t.exp() * (log_t - log_s)).sum(-1) * keep).sum() / keep.sum().clamp(min=1) * T * T
        loss = (1 - d.alpha) * ce + d.alpha * kl
        aux = plain.collect_aux_loss()
        if aux is not None:
            loss = loss + aux
        return loss, {"aux_loss": aux.detach() if aux is not None else None, "kl": kl.detach(), "ce": ce.detach()}


# --------------------------------------------------------------------------------------------------
# Finetuning: the starting weights (init_from) and LoRA
# --------------------------------------------------------------------------------------------------
@dataclass
class Base:
    """Where a finetune's starting weights come from."""
    kind: str                     # "run" (a foundry run directory) | "zoo" (a zoo name / HF checkpoint directory)
    path: Path
    model_args: dict
    tokenizer: object
    template: str | None          # the checkpoint's chat template, if any


def _needs_base(cfg: ExperimentConfig) -> str | None:
    if cfg.lora.rank > 0:
        return f"lora.rank={cfg.lora.rank}"
    if cfg.training.objective != "lm":
        return f"training.objective={cfg.training.objective}"
    return None


def _make_base_hint(cfg: ExperimentConfig) -> str:
    parent = dict(cfg.lineage or {}).get("parent")
    if parent:
        return f"train the base first: python -m foundry.train {parent}"
    return "train a base first (python -m foundry.train experiments/baseline.yaml) and set init_from to its out_dir"


def _parent_out_dir(cfg: ExperimentConfig) -> str | None:
    """The out_dir of the experiment this one was mutated from (its lineage parent), if that file is readable."""
    from foundry.config import load_experiment

    try:
        return load_experiment(cfg.lineage["parent"]).out_dir
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_base(cfg: ExperimentConfig) -> Base | None:
    """The base of a finetune (None for a from-scratch run). LoRA and the sft/dpo objectives need one: they
    never train on a random base; the error says which command makes it."""
    from foundry.checkpoint import find_checkpoint

    why = _needs_base(cfg)
    if cfg.init_from is None:
        if why:
            raise ConfigError(f"{why} finetunes a trained model, and init_from is not set: set init_from to a trained "
                              f"run directory or a zoo model (python -m foundry.zoo list); {_make_base_hint(cfg)}")
        return None
    p = Path(cfg.init_from)
    is_run = p.is_dir() and not (p / "config.json").is_file() and \
        any((p / f).exists() for f in ("config.yaml", "ckpt_last", "ckpt_best"))
    from foundry.zoo import NAMED

    if not p.exists() and cfg.init_from not in NAMED and (cfg.lineage or {}).get("parent") and \
            cfg.init_from == _parent_out_dir(cfg):
        raise ConfigError(f"init_from={cfg.init_from}: the run this experiment finetunes has not been trained yet; "
                          f"{_make_base_hint(cfg)}")
    if is_run:
        ckpt = next((c for c in (find_checkpoint(p / "ckpt_best"), find_checkpoint(p / "ckpt_last")) if c), None)
        if ckpt is None:
            raise ConfigError(f"init_from={cfg.init_from}: this run directory holds no trained checkpoint yet; "
                              f"{_make_base_hint(cfg)}")
        import yaml

        from foundry.config import from_dict
        from foundry.data.tokenize import load_tokenizer

        stored = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
        if stored.lora.rank > 0:
            raise ConfigError(f"init_from={cfg.init_from} is itself a LoRA run; export it merged first "
                              f"(foundry.lora.merged_state) or start from its base")
        return Base("run", ckpt, stored.to_dict()["model_args"], load_tokenizer(p / "tokenizer.json"), None)
    try:
        from foundry.zoo import catalog
        from foundry.zoo.load import chat_template
        from foundry.data.tokenize import load_tokenizer

        args, d = catalog.checkpoint_model_args(cfg.init_from)
    except (OSError, ValueError) as e:
        raise ConfigError(f"init_from={cfg.init_from}: neither a foundry run directory nor a checkpoint the zoo "
                          f"finds ({e}); {_make_base_hint(cfg)}") from None
    return Base("zoo", d, args, load_tokenizer(d), chat_template(d))


def with_base_architecture(cfg: ExperimentConfig, base: Base | None) -> ExperimentConfig:
    """The experiment with the base's architecture: its model_args, but the experiment's training-only keys
    (config.CHECKPOINT_FREE_KEYS: dropout, init_std, extra, and block_size when it is not above the base's)."""
    from foundry.config import CHECKPOINT_FREE_KEYS

    if base is None:
        return cfg
    keep = {k: getattr(cfg.model_args, k) for k in CHECKPOINT_FREE_KEYS if k != "block_size"}
    limit = base.model_args.get("block_size", cfg.model_args.block_size)
    args = {**base.model_args, **keep, "block_size": min(cfg.model_args.block_size, limit)}
    return cfg.replace({f"model_args.{k}": v for k, v in args.items()})


def load_base_weights(model: nn.Module, base: Base) -> None:
    if base.kind == "run":
        from foundry.checkpoint import load_weights

        load_weights(model, base.path)
        return
    from foundry.zoo.load import load_into

    load_into(model, base.path)  # through the zoo's key map, one tensor at a time (no second model)


def check_base_tokenizer(data, base: Base | None) -> None:
    """Text trained on a base must be tokenized by the base's own tokenizer (the ids mean its tokens)."""
    if base is None:
        return
    tok = getattr(data, "tokenizer", None)

    def core(t):
        d = json.loads(t.to_json())
        return d.get("tokenizer", d)

    if tok is None or core(tok) != core(base.tokenizer):
        where = base.path if base.kind == "zoo" else base.path.parent
        raise ConfigError(f"init_from={where}: the data ({getattr(data, 'name', '?')}) is not tokenized with the "
                          f"base's tokenizer; prepare it with `python -m foundry.data prepare --input TEXT "
                          f"--tokenizer {where} --out DIR` and set data.path to DIR")


def load_finetuned(cfg: ExperimentConfig, ckpt) -> nn.Module:
    """The model a LoRA run's checkpoint describes, as a plain GPT: the base (init_from) with the adapters merged."""
    from foundry.lora import merged_state
    from foundry.model import GPT

    obj = OBJECTIVES.get(cfg.training.objective)(cfg)
    adapted = obj.build_model(obj.prepare(cfg))
    obj.load_checkpoint(adapted, ckpt)
    model = GPT(cfg.model_args)
    model.load_state_dict(merged_state(adapted))
    return model


# --------------------------------------------------------------------------------------------------
# The finetuning objectives' shared parts
# --------------------------------------------------------------------------------------------------
class FinetuneObjective(Objective):
    """A trained base (init_from, required), optionally LoRA-wrapped, and chat-rendered examples from data.path."""

    def renderer(self, cfg: ExperimentConfig, tokenizer):
        from foundry.data.finetune import Renderer, choose_format

        template = self.base.template if self.base is not None else None
        return Renderer(choose_format(cfg.data.chat_format, tokenizer, template), tokenizer, template)

    def data_path(self, cfg: ExperimentConfig) -> Path:
        if cfg.data.path is None:
            raise ConfigError(f"training.objective={cfg.training.objective} reads data.path, a JSONL file "
                              f"(see foundry/data/finetune.py for the record shapes); it is not set")
        return Path(cfg.data.path)


class ExampleSampler:
    """Rows of a fixed table in a seeded random order, epoch after epoch; one global row counter (state), of
    which rank r takes its share of each global batch, so any process count sees the same global batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, fetch=None):
        self.n, self.B, self.seed, self.rank, self.world = n_rows, batch_size, seed, rank, world_size
        self.fetch = fetch            # row indices (B,) -> the batch
        self.row = 0
        self._epoch, self._perm = -1, None

    def next_batch(self):
        return self.fetch(self.rows())

    def rows(self) -> torch.Tensor:
        out = []
        first = self.row + self.rank * self.B
        for g in range(first, first + self.B):
            epoch, i = divmod(g, self.n)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._perm[i]))
        self.row += self.B * self.world
        return torch.tensor(out)

    def state_dict(self) -> dict:
        return {"kind": "examples", "row": self.row}

    def load_state_dict(self, state: dict) -> None:
        self.row = int(state["row"])


# --------------------------------------------------------------------------------------------------
# SFT: loss on the assistant's tokens of packed, chat-rendered examples
# --------------------------------------------------------------------------------------------------
@dataclass
class SFTData:
    name: str
    tokenizer: object
    train: object                 # data.pack.Packed
    val: object
    fingerprint: str
    chat_format: str
    examples: tuple[int, int]     # (train, validation) examples

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> str:
        return (f"{self.name} ({self.examples[0]:,} train / {self.examples[1]:,} held-out examples in "
                f"{self.train.tokens.shape[0]:,} + {self.val.tokens.shape[0]:,} packed rows, {self.chat_format}, "
                f"vocab {self.vocab_size})")


def _fingerprint(path: Path, extra: str) -> str:
    import hashlib

    h = hashlib.sha256(path.read_bytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


@OBJECTIVES.register("sft")
class SupervisedFinetuning(FinetuneObjective):
    """Cross-entropy on assistant tokens only; examples packed into block_size rows with document masks (each
    example attends only to itself, positions restart), validation on the file's last val_examples examples."""

    name = "sft"

    def load_data(self, cfg: ExperimentConfig) -> SFTData:
        from foundry.data.finetune import DataError, describe_records, read_jsonl, sft_messages, split_records
        from foundry.data.pack import pack

        path = self.data_path(cfg)
        tok = self.base.tokenizer
        render = self.renderer(cfg, tok)              # a format the tokenizer lacks fails here, before reading
        rows = read_jsonl(path)
        if all("chosen" in r and "rejected" in r for _, r in rows[:50]):
            raise ConfigError(f"training.objective=sft: {path} holds preference pairs ({describe_records(rows)}); "
                              f"SFT needs messages, prompt/response or instruction/output records; for pairs use "
                              f"training.objective=dpo")
        train_rows, val_rows = split_records(rows, cfg.data.reserved, cfg.data.val_examples, path)

        def encode(part):
            out = []
            for line, rec in part:
                ids, mask = render.tokens(sft_messages(rec, f"{path}:{line}"))
                if not any(mask[1:]):
                    raise DataError(f"{path}:{line}: no assistant token survives rendering, nothing to train")
                out.append((ids, mask))
            return out

        T = cfg.model_args.block_size
        pad = tok.token_id("pad") or 0
        train, val = pack(encode(train_rows), T, pad_id=pad), pack(encode(val_rows), T, pad_id=pad)
        return SFTData(path.name, tok, train, val, _fingerprint(path, f"{render.fmt}:{T}"), render.fmt,
                       (len(train_rows), len(val_rows)))

    def sampler(self, data: SFTData, rank: int, world_size: int):
        from foundry.data.sampler import split_batch

        micro, _ = split_batch(self.cfg.training, world_size)
        return ExampleSampler(data.train.tokens.shape[0], micro, self.cfg.training.seed, rank, world_size,
                              fetch=lambda rows: self._rows(data.train, rows))

    @staticmethod
    def _rows(packed, rows):
        sel = rows.numpy()
        return tuple(torch.as_tensor(a[sel]) for a in (packed.tokens, packed.targets, packed.positions,
                                                       packed.doc_ids))

    def loss(self, model: nn.Module, batch):
        from foundry.data.pack import attention_mask

        x, y, pos, doc = batch
        loss, info = model(x, y, positions=pos, mask=attention_mask(doc))
        return loss, {"aux_loss": info.get("aux_loss")}

    def evaluate(self, model, data: SFTData, device, ctx, info=None, per_item: bool = False) -> dict:
        """Mean cross-entropy over the assistant tokens of the held-out examples (nats/token), and the same as bits
        per UTF-8 byte of those tokens (val_bpb, what a sweep ranks by, comparable across tokenizers); per_item
        adds each example's mean ("items": [{"id", "loss"}], for the eval harness's paired comparison)."""
        from foundry.data.pack import attention_mask

        was = model.training
        model.eval()
        nats, n, n_bytes = 0.0, 0, 0.0
        byte_len = torch.tensor(data.tokenizer.token_byte_lengths(), dtype=torch.float64)
        ex_nats = torch.zeros(data.val.n_examples, dtype=torch.float64)
        ex_n = torch.zeros(data.val.n_examples, dtype=torch.float64)
        B = self.cfg.training.batch_size
        with torch.no_grad():
            for i in range(0, data.val.tokens.shape[0], B):
                x, y, pos, doc = self.to_device(self._rows(data.val, torch.arange(i, min(i + B,
                                                                                     data.val.tokens.shape[0]))), device)
                with ctx:
                    logits = model(x, positions=pos, mask=attention_mask(doc))
                tok_nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                                            ignore_index=-1, reduction="none")  # (B T,)
                nats += float(tok_nll.sum())
                n += int((y != -1).sum())
                keep = (y.flatten() != -1).cpu()
                n_bytes += float(byte_len[y.flatten().cpu()[keep]].sum())
                ids = doc.flatten().cpu()[keep]
                ex_nats.index_add_(0, ids, tok_nll.detach().cpu().double()[keep])
                ex_n.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        model.train(was)
        out = {"val_loss": nats / max(n, 1), "val_bpb": nats / math.log(2) / max(n_bytes, 1.0), "val_tokens": n}
        if per_item:
            out["items"] = [{"id": str(i), "loss": float(ex_nats[i] / ex_n[i])} for i in range(len(ex_n)) if ex_n[i] > 0]
        return out


# --------------------------------------------------------------------------------------------------
# DPO: preference pairs against a frozen reference
# --------------------------------------------------------------------------------------------------
def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, rpo_alpha: float = 0.0,
             chosen_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair preference losses from sequence log-probabilities (B,) of the policy and the reference.

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), the log-ratio margin:
        sigmoid  -(1 - e) log s(beta h) - e log s(-beta h)       DPO (Rafailov et al. 2023, eq. 7); e > 0 is
                                                                conservative DPO (Mitchell 2023)
        robust   (-(1 - e) log s(beta h) + e log s(-beta h)) / (1 - 2e)   unbiased under flip rate e
                                                                (Chowdhury et al. 2024, eq. 9)
        hinge    max(0, 1 - beta h)                              SLiC-HF (Zhao et al. 2023)
        ipo      (h - 1 / (2 beta))^2                            IPO (Azar et al. 2023, eq. 17)
    rpo_alpha > 0 adds rpo_alpha * -log pi(y_w) / |y_w| (chosen_tokens: |y_w|, (B,)), RPO (Pang et al. 2024, eq. 1).
    """
    F = torch.nn.functional
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    e = label_smoothing
    if loss_type == "sigmoid":
        loss = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        loss = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"training.dpo.loss_type {loss_type!r}: use sigmoid, ipo, hinge or robust")
    if rpo_alpha:
        if chosen_tokens is None:
            raise ValueError("dpo_loss: rpo_alpha > 0 needs chosen_tokens, the chosen answers' token counts (B,)")
        loss = loss - rpo_alpha * pi_chosen / chosen_tokens
    return loss


def sequence_logps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) sum of log p(y_t | x_<=t) over the positions where y != -1 (the answer's tokens)."""
    logits = model(x)                                                     # (B, T, V)
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y.clamp_min(0), reduction="none")
    return -(nll * (y != -1)).sum(-1)                                     # (B,)


@dataclass
class PairData:
    name: str
    tokenizer: object
    train: list                   # [(chosen ids, chosen targets, rejected ids, rejected targets, line)]
    val: list
    fingerprint: str
    chat_format: str
    split: dict                   # the records used: reserved for evaluation, trained, validated (recorded)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> str:
        return (f"{self.name} ({len(self.train):,} train / {len(self.val):,} held-out pairs, "
                f"{self.split['reserved']} reserved for evaluation, {self.split['prompt_truncated']} prompts cut "
                f"from the left and {self.split['answers_truncated']} answer pairs capped to fit, "
                f"{self.chat_format}, vocab {self.vocab_size})")


def fit_pair(chosen: tuple[list[int], list[bool]], rejected: tuple[list[int], list[bool]], T: int):
    """Inputs and targets (-1 outside the answer) of a pair's two rendered exchanges, each at most T tokens, and
    what was cut: ((cx, cy, rx, ry), (prompt cut, answers cut)); None if no preference is left.

    Both sequences share one prompt (the tokens before the answers) and are cut alike, as TRL's DPO
    truncation does: a pair that does not fit first loses the prompt's start (its end, the turns nearest the
    answer, is kept) down to half the block, then the answers are capped to what remains. So no pair is lost to
    its length; only a pair whose capped answers are identical (or empty) is."""
    (ci, cm), (ri, rm) = chosen, rejected
    if True not in cm or True not in rm:
        return None
    p = 0
    for a, b in zip(ci[:cm.index(True)], ri[:rm.index(True)]):
        if a != b:
            break
        p += 1
    prompt, answers = ci[:p], [(ci[p:], cm[p:]), (ri[p:], rm[p:])]
    longest = max(len(a) for a, _ in answers)
    keep, cap = p, longest
    if p + longest > T + 1:
        keep = min(p, max(T + 1 - longest, (T + 1) // 2))
        cap = T + 1 - keep
    out = []
    for a, m in answers:
        ids, mask = prompt[p - keep:] + a[:cap], [False] * keep + m[:cap]
        y = [t if k else -1 for t, k in zip(ids[1:], mask[1:])]
        if all(t == -1 for t in y):
            return None
        out += [ids[:-1], y]
    if out[:2] == out[2:]:
        return None
    return tuple(out), (keep < p, cap < longest)


@OBJECTIVES.register("dpo")
class DirectPreference(FinetuneObjective):
    """DPO and its variants (training.dpo) on (prompt, chosen, rejected) pairs; the reference is the same network
    with its adapters disabled under LoRA (no second copy), a frozen copy of the starting weights otherwise."""

    name = "dpo"

    def load_data(self, cfg: ExperimentConfig) -> PairData:
        from foundry.data.finetune import DataError, describe_records, preference_pair, read_jsonl, split_records

        path = self.data_path(cfg)
        tok = self.base.tokenizer
        render = self.renderer(cfg, tok)
        rows = read_jsonl(path)
        if not any("chosen" in r and "rejected" in r for _, r in rows[:50]):
            raise ConfigError(f"training.objective=dpo: {path} is not preference data ({describe_records(rows)}); "
                              f"DPO needs pairs: {{prompt, chosen, rejected}} records or HH-RLHF {{chosen, rejected}} "
                              f"dialogues")
        self._check_split(cfg, path)
        train_rows, val_rows = split_records(rows, cfg.data.reserved, cfg.data.val_examples, path)
        T = cfg.model_args.block_size

        cuts = {"skipped": 0, "prompt_truncated": 0, "answers_truncated": 0}

        def encode(part):
            out = []
            for line, rec in part:
                pair = preference_pair(rec, f"{path}:{line}", line)
                fit = pair and fit_pair(render.prompt_and_answer(pair.prompt, pair.chosen),
                                        render.prompt_and_answer(pair.prompt, pair.rejected), T)
                if not fit:  # nothing to prefer: identical endings, or answers identical once capped
                    cuts["skipped"] += 1
                    continue
                out.append((*fit[0], line))
                cuts["prompt_truncated"] += fit[1][0]
                cuts["answers_truncated"] += fit[1][1]
            return out

        train, val = encode(train_rows), encode(val_rows)
        if not train or not val:
            raise DataError(f"{path}: no usable pairs left after rendering in block_size={T} (train {len(train)}, "
                            f"validation {len(val)}); raise model_args.block_size or check the records")
        first = train_rows[0][0]
        split = {"file": str(path), "records": len(rows), "reserved": cfg.data.reserved,
                 "train_lines": [first, train_rows[-1][0]], "val_lines": [val_rows[0][0], val_rows[-1][0]],
                 "train_pairs": len(train), "val_pairs": len(val), **cuts}
        return PairData(path.name, tok, train, val, _fingerprint(path, f"{render.fmt}:{T}:{cfg.data.reserved}"),
                        render.fmt, split)

    @staticmethod
    def _check_split(cfg: ExperimentConfig, path: Path) -> None:
        """Training on the file the Constitution eval (hh_rlhf) scores must leave its items out, explicitly."""
        from foundry.eval.spec import get_task

        try:
            names = {Path(d).name for d in get_task("hh_rlhf").data}
        except Exception:  # noqa: BLE001 - no task file: nothing to protect
            return
        if path.name in names and cfg.data.reserved == 0:
            raise ConfigError(f"data.path {path} is the file the hh_rlhf (Constitution) eval scores; DPO must not "
                              f"train on its items: set data.reserved=N to leave its first N records to the eval, "
                              f"and evaluate with --limit N (e.g. data.reserved=500)")

    def sampler(self, data: PairData, rank: int, world_size: int):
        from foundry.data.sampler import split_batch

        micro, _ = split_batch(self.cfg.training, world_size)
        return ExampleSampler(len(data.train), micro, self.cfg.training.seed, rank, world_size,
                              fetch=lambda rows: self.collate(data.train, rows.tolist()))

    def tokens_per_row(self) -> int:
        return 2 * self.cfg.model_args.block_size  # a pair is two sequences

    @staticmethod
    def collate(pairs: list, rows: list[int]):
        """(x, y) of shape (2B, L): the B chosen sequences, then the B rejected ones, right-padded to the longest
        (padding after a sequence is never attended to by it, causally; its targets are -1)."""
        seqs = [(pairs[i][0], pairs[i][1]) for i in rows] + [(pairs[i][2], pairs[i][3]) for i in rows]
        L = max(len(x) for x, _ in seqs)
        x = torch.zeros(len(seqs), L, dtype=torch.long)
        y = torch.full((len(seqs), L), -1, dtype=torch.long)
        for j, (xi, yi) in enumerate(seqs):
            x[j, :len(xi)], y[j, :len(yi)] = torch.tensor(xi), torch.tensor(yi)
        return x, y

    def reference_mode(self) -> str:
        ref = self.cfg.training.dpo.reference
        if ref == "auto":
            return "adapters_off" if self.cfg.lora.rank > 0 else "copy"
        if ref == "adapters_off" and self.cfg.lora.rank == 0:
            raise ConfigError("training.dpo.reference=adapters_off needs LoRA (lora.rank > 0); use copy or auto")
        return ref

    def attach(self, model: nn.Module, device) -> None:
        """The frozen reference: a copy of the starting weights (mode copy), or nothing to build (adapters_off)."""
        import copy

        self.policy, self.ref = model, None
        self._val_ref = None  # (held-out pairs, batch size, {batch start: reference log-probs}), see evaluate
        if self.reference_mode() == "copy":
            self.ref = copy.deepcopy(model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)

    def ref_logps(self, x, y) -> torch.Tensor:
        from foundry.lora import adapters_disabled

        with torch.no_grad():
            if self.ref is not None:
                return sequence_logps(self.ref, x, y)
            with adapters_disabled(self.policy):
                was = self.policy.training
                self.policy.eval()  # the reference runs without adapter dropout
                out = sequence_logps(self.policy, x, y)
                self.policy.train(was)
                return out

    def pair_stats(self, model, batch, ref: torch.Tensor | None = None) -> dict:
        """Per pair: the loss and TRL's logged quantities. `ref`: the batch's reference log-probs, if known."""
        x, y = batch
        B = x.shape[0] // 2
        pi = sequence_logps(model, x, y)
        ref = self.ref_logps(x, y) if ref is None else ref
        d = self.cfg.training.dpo
        n_chosen = (y[:B] != -1).sum(-1).clamp_min(1)                    # (B,) answer tokens
        losses = dpo_loss(pi[:B], pi[B:], ref[:B], ref[B:], d.beta, d.loss_type, d.label_smoothing, d.rpo_alpha,
                          n_chosen)
        nll = -pi[:B] / n_chosen                                          # RPO's term, logged whatever rpo_alpha
        chosen_r, rejected_r = d.beta * (pi[:B] - ref[:B]).detach(), d.beta * (pi[B:] - ref[B:]).detach()
        return {"losses": losses, "nll/chosen": nll.detach(), "rewards/chosen": chosen_r,
                "rewards/rejected": rejected_r,
                "rewards/accuracies": (chosen_r > rejected_r).float(), "rewards/margins": chosen_r - rejected_r,
                "logps/chosen": pi[:B].detach(), "logps/rejected": pi[B:].detach(),
                "pref": (pi[:B] > pi[B:]).float() + 0.5 * (pi[:B] == pi[B:]).float(), "ref": ref}

    def loss(self, model: nn.Module, batch):
        st = self.pair_stats(model, batch)
        return st["losses"].mean(), {k: v.mean() for k, v in st.items() if "/" in k}

    def evaluate(self, model, data: PairData, device, ctx, info=None, per_item: bool = False) -> dict:
        """Held-out pairs: the DPO loss (val_loss), the preference accuracy log pi(chosen) > log pi(rejected) (a tie
        counts 1/2, as the Constitution eval scores it), the implicit-reward accuracy and margin."""
        was = model.training
        model.eval()
        B = self.cfg.training.batch_size
        # the reference is frozen and the held-out pairs fixed: their reference log-probs are computed at the
        # first evaluation only (a third of each later evaluation's forward passes)
        cache = self._val_ref
        if cache is None or cache[0] is not data.val or cache[1] != B:
            cache = self._val_ref = (data.val, B, {})
        refs = cache[2]
        acc = {"losses": [], "pref": [], "rewards/accuracies": [], "rewards/margins": [], "logps/chosen": [],
               "logps/rejected": [], "tokens/chosen": [], "tokens/rejected": []}
        with torch.no_grad():
            for i in range(0, len(data.val), B):
                batch = self.to_device(self.collate(data.val, list(range(i, min(i + B, len(data.val))))), device)
                with ctx:
                    st = self.pair_stats(model, batch, refs.get(i))
                refs[i] = st["ref"]
                n_tok = (batch[1] != -1).sum(-1)
                st["tokens/chosen"], st["tokens/rejected"] = n_tok[:len(n_tok) // 2], n_tok[len(n_tok) // 2:]
                for k in acc:
                    acc[k] += st[k].float().cpu().tolist()
        model.train(was)
        n = len(acc["pref"])
        out = {"val_loss": sum(acc["losses"]) / n, "val_pref_acc": sum(acc["pref"]) / n,
               "val_reward_acc": sum(acc["rewards/accuracies"]) / n, "val_margin": sum(acc["rewards/margins"]) / n,
               "val_pairs": n}
        if per_item:
            # per pair (id: the record's line): the preference outcome, both log-probs and answer lengths, the
            # implicit reward margin against the reference
            out["items"] = [{"id": str(pair[4]), "correct": acc["pref"][j], "logp_chosen": acc["logps/chosen"][j],
                             "logp_rejected": acc["logps/rejected"][j], "tokens_chosen": int(acc["tokens/chosen"][j]),
                             "tokens_rejected": int(acc["tokens/rejected"][j]),
                             "reward_margin": acc["rewards/margins"][j]} for j, pair in enumerate(data.val)]
        return out
