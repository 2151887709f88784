"""bench/bench_variants.py runs (tiny sizes, in process) and reports every column for the variants asked for."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_variants", REPO / "bench" / "bench_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_variants_tiny(tmp_path, capsys):
    import json
    bench = load_bench()
    out = tmp_path / "rows.json"
    assert bench.main(["--layers", "1", "--width", "32", "--heads", "2", "--seq", "16", "--batch", "2",
                       "--reps", "1", "--threads", "1", "--in-process", "--json", str(out),
                       "--only", "attention:mla,attention:gqa,mlp:moe,loss:focal,norm_placement:sandwich"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["family"], r["name"]) for r in rows] == [
        ("baseline", "v1"), ("attention", "mla"), ("attention", "gqa"), ("mlp", "moe"), ("loss", "focal"),
        ("norm_placement", "sandwich")]
    by = {r["name"]: r for r in rows}
    assert by["v1"]["kv_bytes_per_token"] == 1 * 2 * 32 * 4          # one layer, K and V, 32 wide, fp32
    assert by["gqa"]["kv_bytes_per_token"] == by["v1"]["kv_bytes_per_token"] // 2
    assert by["mla"]["kv_bytes_per_token"] == 32 * 4                 # kv_rank 32, no rope key with learned positions
    assert by["moe"]["params"] > by["v1"]["params"]
    assert all(r["ms"] > 0 and r["peak_mb"] >= 0 and len(r["ms_all"]) == 1 for r in rows)
    assert by["v1"]["x_base"] == 1.0
    table = capsys.readouterr().out
    assert "| attention | mla |" in table and "Command: `python bench/bench_variants.py" in table


def test_bench_refuses_unknown_variant():
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--only", "attention:nope_not_real", "--in-process"])


def test_bench_decode_tiny(capsys):
    spec = importlib.util.spec_from_file_location("bench_decode", REPO / "bench" / "bench_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--layers", "1", "--width", "32", "--heads", "4", "--prompt", "12", "--new", "4",
                       "--batch", "1", "--reps", "1", "--window", "4", "--kv-rank", "8"])
    assert list(rows) == ["mha", "gqa", "mla", "mla (expanded)", "sliding_window"]
    assert all(r["prefill_ms"] > 0 and r["decode_ms"] > 0 for r in rows.values())
    assert rows["sliding_window"]["cache_mb"] == rows["mha"]["cache_mb"] * 3 / 16  # window - 1 of 16 slots
    assert rows["gqa"]["cache_mb"] == rows["mha"]["cache_mb"] / 2 and rows["mla"]["cache_mb"] < rows["mha"]["cache_mb"]
    assert "| mla (expanded) |" in capsys.readouterr().out
