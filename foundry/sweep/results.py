"""What the trials measured, read back from the store: per-candidate results, the ranking metric, the samples
the decision takes ({seed index: value}) and per-item gains for a capability score. Torch-free.

Ranking metric: capability (the mean score over the named eval tasks) when some task separates the candidates;
a task that cannot (every candidate at chance, or all equal) is set aside, out loud, and when no task is left
validation bits per byte ranks alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def collect(store, cand, specs, tasks: list[str]) -> dict:
    """One candidate's result over the trial specs given (its seeds, in order)."""
    if cand.cfg is None:
        return {"status": cand.status, "mutation": cand.mutation, "error": cand.error}
    rows = [store.get(s.id) for s in specs]
    statuses = {r["status"] if r else "missing" for r in rows}
    status = "done" if statuses == {"done"} else ("failed" if "failed" in statuses else
                                                  "pruned" if "pruned" in statuses else "incomplete")
    res = {"status": status, "mutation": cand.mutation, "config_hash": cand.cfg.hash(),
           "seed_index": [s.seed_index for s in specs], "seeds": [r["seed"] if r else None for r in rows],
           **{k: [r["metrics"].get(k) if r else None for r in rows] for k in ("val_bpb", "val_loss", "iters")},
           "wall_seconds": [r["wall_seconds"] if r else None for r in rows],
           "run_ids": [r["id"] if r else None for r in rows]}
    errs = [r["error"] for r in rows if r and r.get("error")]
    if errs:
        res["error"] = errs[0]
    elif status == "pruned":
        bpb = [b for b in res["val_bpb"] if b is not None]
        res["error"] = (f"pruned at iteration {max(i for i in res['iters'] if i)} by successive halving "
                        f"(val bpb {sum(bpb) / len(bpb):.4f} there)") if bpb else "pruned"
    if status == "done" and tasks:
        res["tasks"] = {t: _task(rows, t) for t in tasks}
    return res


def _task(rows: list[dict], task: str) -> dict:
    per = [r["metrics"].get("tasks", {}).get(task, {}) for r in rows]
    if any("score" not in p for p in per):
        return {"error": next((p.get("error") for p in per if p.get("error")), "no score")}
    return {"scores": [p["score"] for p in per], "chance": per[0].get("chance", 0.0), "n": per[0].get("n", 0),
            "metric": per[0].get("metric"), "items": [p.get("items_path") for p in per]}


def curves(store, specs) -> list[dict]:
    """Training loss and validation bpb curves of each seed, for the plots."""
    from foundry.sweep.plan import read_metrics
    out = []
    for s in specs:
        r = store.get(s.id)
        if not r:
            continue
        m = read_metrics(Path(r["artifacts"].get("out_dir", "")) / "metrics.jsonl")
        out.append({"train": sorted({x["iter"]: x["loss"] for x in m if "loss" in x and "iter" in x}.items()),
                    "val": sorted({x["iter"]: x["val_bpb"] for x in m if "val_bpb" in x}.items())})
    return out


# --------------------------------------------------------------------------------------------------
# The ranking metric
# --------------------------------------------------------------------------------------------------
def _at_chance(scores: list[float], chance: float, n: int) -> bool:
    """A mean score indistinguishable from guessing: within two binomial standard errors of chance."""
    margin = 2 * math.sqrt(max(chance * (1 - chance), 0.0) / max(n, 1))
    return _mean(scores) <= chance + margin


def ranking_metric(results: dict[str, dict], tasks: list[str]) -> dict:
    """{"metric": "capability"|"val_bpb", "tasks": informative tasks, "notes": [sentences said out loud]}."""
    done = [k for k, r in results.items() if r["status"] == "done"]
    notes, informative = [], []
    for t in tasks:
        per = {k: results[k].get("tasks", {}).get(t) for k in done}
        if not done or any(p is None or p.get("error") for p in per.values()):
            errs = sorted({p.get("error", "no score") for p in per.values() if p is None or p.get("error")})
            notes.append(f"task {t!r} could not be scored ({'; '.join(errs)[:300]}), so it does not rank")
            continue
        first = next(iter(per.values()))
        scores = {k: p["scores"] for k, p in per.items()}
        if all(_at_chance(s, first["chance"], first["n"]) for s in scores.values()) or \
                len({round(_mean(s), 9) for s in scores.values()}) == 1:
            shown = ", ".join(f"{k} {_mean(s):.3f}" for k, s in scores.items())
            notes.append(f"task {t!r} cannot tell the candidates apart (all at chance {first['chance']:.3f} on "
                         f"{first['n']} items: {shown}), so it does not rank")
        else:
            informative.append(t)
    no_bpb = any(b is None for k in done for b in results[k]["val_bpb"])
    scored = [t for t in tasks if t not in informative and done
              and all(results[k].get("tasks", {}).get(t, {}).get("scores") for k in done)]
    if tasks and not informative and no_bpb and scored:  # dpo trials: no bits per byte to fall back on
        notes.append("ranking by the tasks anyway: some candidates (the dpo objective) report no validation "
                     "bits per byte to fall back on")
        return {"metric": "capability", "tasks": scored, "notes": notes}
    if tasks and not informative:
        notes.append("ranking by validation bits per byte instead, because no task separates the candidates")
    elif not tasks:
        notes.append("no eval task named: ranking by validation bits per byte")
    else:
        notes.append(f"ranking by capability (mean score on {', '.join(informative)})")
    return {"metric": "capability" if informative else "val_bpb", "tasks": informative, "notes": notes}


def samples(res: dict, how: dict) -> dict[int, float]:
    """{seed index: the ranking metric} over a candidate's finished seeds."""
    if res.get("status") != "done":
        return {}
    if how["metric"] == "val_bpb":  # a seed without one (a dpo trial) has no sample
        return {i: b for i, b in zip(res["seed_index"], res["val_bpb"]) if b is not None}
    per = [res["tasks"][t]["scores"] for t in how["tasks"]]
    return {i: _mean([p[j] for p in per]) for j, i in enumerate(res["seed_index"])}


def item_gains(base: dict, cand: dict, how: dict, indices: list[int]) -> np.ndarray | None:
    """D[s, i]: the candidate's per-item score minus the baseline's on seed index s, item i (items of every
    informative task, weighted so that D.mean() is the gain in mean task score). None when an item file is
    missing or the two do not share items."""
    blocks = []
    for t in how["tasks"]:
        rows = []
        for s in indices:
            a = _items(base["tasks"][t]["items"][base["seed_index"].index(s)])
            b = _items(cand["tasks"][t]["items"][cand["seed_index"].index(s)])
            if a is None or b is None or set(a) != set(b) or not a:
                return None
            rows.append([b[k] - a[k] for k in sorted(a)])
        blocks.append(np.asarray(rows, dtype=float) / len(how["tasks"]))
    sizes = [b.shape[1] for b in blocks]
    total = sum(sizes)
    return np.concatenate([b * total / n for b, n in zip(blocks, sizes)], axis=1)


def _items(path: str | None) -> dict[str, float] | None:
    if not path or not Path(path).is_file():
        return None
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["id"]] = float(r.get("correct", r.get("score", 0.0)))
    return out
