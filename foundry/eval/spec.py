"""Declarative task definitions: one YAML file per task in `foundry/eval/tasks/`, discovered at import.

A task file is data, never code: `kind` names a runner registered in `foundry.eval.runners` (gsm8k, mmlu,
humaneval, pairwise, probe); everything else is a prompt template, a data path, a few-shot source, a metric and
kind-specific `options`. Loading is strict: an unknown key fails naming the file and the closest valid key.
`version` must be bumped whenever a change would move a score (prompt, data, metric, stop sequences), so two
results are comparable only when name and version match (both are written beside every score).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from foundry.registry import suggest


class TaskError(ValueError):
    """A task that cannot run: unknown name, bad definition, missing data. The message says what to do."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    kind: str                              # runner name: gsm8k | mmlu | humaneval | pairwise | probe
    description: str
    metric: str                            # name of the headline metric
    data: list = field(default_factory=list)         # candidate paths under the data dir, first present wins
    data_format: str = ""                  # human description, quoted when the file is missing
    package_data: bool = False             # data ships inside foundry/eval/tasks/ (no data dir needed)
    fewshot: list = field(default_factory=list)      # candidate paths of the few-shot pool (same rules)
    num_fewshot: int = 0                   # default k
    max_fewshot: Optional[int] = None      # largest k the pool supports (e.g. MMLU dev: 5 per subject)
    description_template: str = ""         # text put once before the shots ({subject} etc.)
    prompt: str = ""                       # template of one item's question, str.format over its fields
    target: str = ""                       # template of a few-shot exemplar's answer
    fewshot_delimiter: str = "\n\n"
    stop: list = field(default_factory=list)
    max_new_tokens: int = 256
    chance: float = 0.0                    # score of a random guesser, printed beside every score
    options: dict = field(default_factory=dict)   # kind-specific settings, documented by each runner
    source: str = ""                       # the YAML file it came from

    def with_source(self, src: str) -> "TaskSpec":
        return dataclasses.replace(self, source=src)


_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)} - {"source"}
_REQUIRED = ("name", "version", "kind", "description", "metric")


def parse_spec(raw: dict, source: str) -> TaskSpec:
    if not isinstance(raw, dict):
        raise TaskError(f"{source}: a task file must be a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in _FIELDS:
            raise TaskError(f"{source}: unknown key {key!r}{suggest(key, _FIELDS)} (valid: {', '.join(sorted(_FIELDS))})")
    for key in _REQUIRED:
        if key not in raw:
            raise TaskError(f"{source}: missing required key {key!r}")
    raw = dict(raw)
    for key in ("data", "fewshot", "stop"):
        if isinstance(raw.get(key), str):
            raw[key] = [raw[key]]
    spec = TaskSpec(**raw).with_source(source)
    if not isinstance(spec.version, int) or spec.version < 1:
        raise TaskError(f"{source}: version must be an integer >= 1, got {spec.version!r}")
    if spec.num_fewshot < 0 or (spec.max_fewshot is not None and spec.num_fewshot > spec.max_fewshot):
        raise TaskError(f"{source}: num_fewshot={spec.num_fewshot} must be in [0, max_fewshot={spec.max_fewshot}]")
    if not 0.0 <= spec.chance <= 1.0:
        raise TaskError(f"{source}: chance must be in [0, 1], got {spec.chance}")
    return spec


def load_task_dir(folder, label: str | None = None) -> dict[str, TaskSpec]:
    """Every `*.yaml` task in a folder (a Path or an importlib Traversable), by name; duplicate names fail.
    `label` names the folder in messages (default: its path)."""
    specs: dict[str, TaskSpec] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        src = f"{label}/{entry.name}" if label else str(entry)
        try:
            raw = yaml.safe_load(entry.read_text())
        except yaml.YAMLError as e:
            raise TaskError(f"{src}: not valid YAML: {e}") from None
        spec = parse_spec(raw, src)
        if spec.name in specs:
            raise TaskError(f"task {spec.name!r} is defined twice: {specs[spec.name].source} and {src}")
        specs[spec.name] = spec
    return specs


_TASKS: dict[str, TaskSpec] | None = None


def all_tasks() -> dict[str, TaskSpec]:
    """The built-in tasks (foundry/eval/tasks/*.yaml), loaded once."""
    global _TASKS
    if _TASKS is None:
        _TASKS = load_task_dir(resources.files("foundry.eval").joinpath("tasks"), "foundry/eval/tasks")
    return _TASKS


def get_task(name: str) -> TaskSpec:
    tasks = all_tasks()
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}{suggest(name, tasks)} (known: {', '.join(sorted(tasks))}; "
                        f"`python -m foundry.eval --list` describes them)")
    return tasks[name]


def task_names() -> list[str]:
    return sorted(all_tasks())
