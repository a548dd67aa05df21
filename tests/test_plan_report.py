"compress_bench writes results.json / .csv / .md with measured and clearly labelled rows."
import csv, json, os
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from stage1_cascade.compression import plan as P


def test_compress_bench_writes_the_report(tmp_path):
    rows = P.compress_bench(tmp_path, mode="cpu")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "cpu" and len(res["rows"]) == len(rows)
    with (tmp_path / "results.csv").open() as f:
        rd = csv.DictReader(f)
        assert tuple(rd.fieldnames[:len(P.ROW_KEYS)]) == P.ROW_KEYS and len(list(rd)) == len(rows)
    md = (tmp_path / "results.md").read_text()
    for r in rows:
        assert list(r)[:len(P.ROW_KEYS)] == list(P.ROW_KEYS)
        assert r["technique"] in md
    fp8 = next(r for r in rows if r["technique"].startswith("FP8 KV"))
    assert fp8["where"].startswith("cpu-twin:") and 0.49 < fp8["bytes_ratio"] < 0.51
    assert 0.0 <= fp8["kl"] and 0.0 <= fp8["top1_agreement"] <= 1.0
    lm = next(r for r in rows if r["technique"].startswith("LMCache"))
    assert lm["where"] == "not measured" and lm["bytes_ratio"] is None and lm["plan_claim"] == "3-10x TTFT speedup"
    ev = next(r for r in rows if "EVICPRESS" in r["technique"])
    assert "SIMULATION" in ev["technique"] and ev["where"] == "simulation"
    # the helpers' rows are either present or their absence is stated, never silently dropped
    own = {"FP8 KV", "LMCache", "EVICPRESS", "Official FP8"}
    theirs = [r for r in rows if not any(r["technique"].startswith(o) for o in own)]
    for mod in ("kv", "quant"):
        stated = any(m.startswith(mod + ".") for m in res["missing"])
        assert stated or theirs, mod


def test_claims_are_looked_up_not_invented():
    assert P.claim_for("ExpectedAttentionPress@0.5") == "60% KV reduction, 0% accuracy loss"
    assert P.claim_for("something new") == ""


def test_bad_mode(tmp_path):
    with pytest.raises(P.PlanError, match="'tpu'"):
        P.compress_bench(tmp_path, mode="tpu")
