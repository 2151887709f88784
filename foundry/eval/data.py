"""Local evaluation data: where it lives and how it is read. Nothing is ever fetched.

The data directory is, in order: the `data_dir` argument (`--data-dir`), the FOUNDRY_EVAL_DATA environment
variable, else `../shared/data` relative to the working directory (the layout of the project's reference data:
`gsm8k/test.jsonl`, `mmlu/mmlu_test.jsonl`, `humaneval/HumanEval.jsonl.gz`, `hh-rlhf/harmless-base_test.jsonl.gz`).
A task lists candidate paths under it (the reference names first, then the names of the Hugging Face and original
releases); the first present wins, and when none is present the error lists them all with the expected format.

Readers: `.jsonl`, `.jsonl.gz`, `.json` (a list of records), `.parquet` (Hugging Face releases; needs pyarrow),
and a directory of MMLU's original per-subject CSV files (`question,A,B,C,D,answer` without a header).
"""
from __future__ import annotations

import csv
import gzip
import json
import os
from importlib import resources
from pathlib import Path

from foundry.eval.spec import TaskError, TaskSpec

ENV_VAR = "FOUNDRY_EVAL_DATA"
DEFAULT_DIR = Path("..") / "shared" / "data"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DIR


def find_file(spec: TaskSpec, candidates: list, data_dir=None, what: str = "data") -> Path:
    """The first candidate present, or a TaskError naming every expected path and the format."""
    if spec.package_data:
        base = resources.files("foundry.eval").joinpath("tasks")
        for rel in candidates:
            p = base.joinpath(rel)
            if p.is_file():
                return Path(str(p))
        raise TaskError(f"task {spec.name}: its packaged {what} file {candidates} is missing from "
                        f"foundry/eval/tasks/; reinstall foundry")
    root = data_root(data_dir)
    for rel in candidates:
        p = root / rel
        if p.exists():
            return p
    where = "\n".join(f"  {root / rel}" for rel in candidates)
    raise TaskError(f"task {spec.name}: {what} file not found; expected one of:\n{where}\n"
                    f"format: {spec.data_format or 'see ' + spec.source}\n"
                    f"Point --data-dir (or the {ENV_VAR} environment variable) at the folder holding it; "
                    f"nothing is downloaded.")


def read_records(path: Path) -> list[dict]:
    """Records of a local data file in any supported format (see the module docstring)."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return _read_mmlu_csv_dir(path)
    try:
        if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                out = []
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise TaskError(f"{path}:{i}: not a JSON line ({e.msg})") from None
                return out
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise TaskError(f"{path}: expected a JSON list of records")
            return data
        if name.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise TaskError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert the "
                                f"file to JSON lines") from None
            return pq.read_table(path).to_pylist()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e})") from None
    raise TaskError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .json or .parquet")


def _read_mmlu_csv_dir(path: Path) -> list[dict]:
    files = sorted(path.glob("*.csv"))
    if not files:
        raise TaskError(f"{path}: a directory of MMLU CSV files (SUBJECT_test.csv) was expected; none found")
    out = []
    for f in files:
        subject = f.stem.rsplit("_", 1)[0]  # abstract_algebra_test -> abstract_algebra
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) != 6 or row[5] not in "ABCD":
                    raise TaskError(f"{f}: MMLU CSV rows are question,A,B,C,D,answer-letter; got {row[:6]!r}")
                out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": "ABCD".index(row[5])})
    return out


def require_fields(records: list[dict], fields: tuple, path: Path) -> None:
    """Fail early, naming the file and the first bad record, if a record lacks a field."""
    if not records:
        raise TaskError(f"{path}: no records")
    for i, r in enumerate(records):
        missing = [f for f in fields if f not in r]
        if missing:
            raise TaskError(f"{path}: record {i} lacks {missing} (has {sorted(r)[:8]}); expected fields {list(fields)}")
