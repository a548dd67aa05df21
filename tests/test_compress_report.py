"""compress_bench writes results.json / .csv / .md with a row for every listed technique: measured,
replayed from a record (and saying so), or labelled; a technique that fails gets a `failed` row
naming its error, and `stage1-cascade compress-bench` then exits non-zero naming it."""
import csv, json, os, re, subprocess, sys
from functools import partial

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from stage1_cascade.compression import kv
from stage1_cascade.compression import report as P
from stage1_cascade.plan.facts import PlanError
from stage1_cascade.compression.quant import recorded_run


def test_compress_bench_writes_the_report(tmp_path):
    rows = P.compress_bench(tmp_path, mode="cpu", progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "cpu" and len(res["rows"]) == len(rows)
    with (tmp_path / "results.csv").open() as f:
        rd = csv.DictReader(f)
        assert tuple(rd.fieldnames[:len(P.ROW_KEYS)]) == P.ROW_KEYS and len(list(rd)) == len(rows)
    md = (tmp_path / "results.md").read_text()
    for r in rows:
        assert list(r)[:len(P.ROW_KEYS)] == list(P.ROW_KEYS)
        assert r["technique"] in md
    # no technique missing: every listed one has its own rows, and nothing failed on this machine
    listed = list(P.list_techniques("cpu"))
    assert res["techniques"] == listed
    assert [t for t in listed if t.startswith("kv:")] == [f"kv:{m}" for m in kv.METHODS if m != "none"]
    assert {r["source"] for r in rows} == set(listed)
    assert res["failed"] == [] and not any(r["where"] == P.FAILED for r in rows)
    # every row says where its figures come from
    label = re.compile(r"cpu-twin:|recorded:\d{4}-\d\d-\d\d |simulation$|not measured$|formula:")
    assert [r["where"] for r in rows if not label.match(r["where"])] == []
    rec = recorded_run()
    replayed = [r for r in rows if r["source"].startswith("llm-compressor:")]
    assert len(replayed) == len(rec["runs"])
    assert all(r["where"].startswith(f"recorded:{rec['measured'][:10]} ") for r in replayed)
    assert not any(r["where"].startswith("recorded:") for r in rows if r not in replayed)
    fp8 = next(r for r in rows if r["technique"].startswith("FP8 KV"))
    assert fp8["where"].startswith("cpu-twin:") and 0.49 < fp8["bytes_ratio"] < 0.51
    assert 0.0 <= fp8["kl"] and 0.0 <= fp8["top1_agreement"] <= 1.0
    lm = next(r for r in rows if r["technique"].startswith("LMCache"))
    assert lm["where"] == "not measured" and lm["bytes_ratio"] is None and lm["plan_claim"] == "3-10x TTFT speedup"
    ev = next(r for r in rows if "EVICPRESS" in r["technique"])
    assert "SIMULATION" in ev["technique"] and ev["where"] == "simulation"


def test_a_failing_technique_gets_a_labelled_row(tmp_path):
    "A job that raises, one that returns nothing and a group that cannot list itself: each a `failed` row."
    groups = {"lmcache": P.TECHNIQUE_GROUPS["lmcache"],
              "impossible": lambda mode: {"snapkv@1.5": partial(kv.bench_kv, methods=["snapkv"], ratios=(1.5,),
                                                                mode=mode, progress=False)},
              "empty": lambda mode: {"nothing": lambda: []},
              "unlistable": lambda mode: P.replayed_rows({"runs": []})}
    rows = P.compress_bench(tmp_path, groups=groups, progress=False)
    assert [(r["source"], r["where"]) for r in rows] == [
        ("lmcache:lmcache", "not measured"), ("impossible:snapkv@1.5", P.FAILED),
        ("empty:nothing", P.FAILED), ("unlistable", P.FAILED)]
    err = {f["technique"]: f["error"] for f in json.loads((tmp_path / "results.json").read_text())["failed"]}
    assert err["impossible:snapkv@1.5"].startswith("KVMethodError: compression ratio 1.5 is outside [0, 1)")
    assert "returned no rows" in err["empty:nothing"] and "no 'measured' date" in err["unlistable"]
    assert "- failed: impossible:snapkv@1.5: KVMethodError" in (tmp_path / "results.md").read_text()


_CLI_WITH_AN_IMPOSSIBLE_TECHNIQUE = """
import sys
from functools import partial
from stage1_cascade.compression import kv, report
report.TECHNIQUE_GROUPS["impossible"] = lambda mode: {
    "snapkv@1.5": partial(kv.bench_kv, methods=["snapkv"], ratios=(1.5,), mode=mode, progress=False)}
from stage1_cascade.cli import main
sys.argv = ["stage1-cascade", "compress-bench", "--out", sys.argv[1], "--only", sys.argv[2]]
main()
"""


def test_cli_exits_nonzero_naming_the_failed_technique(tmp_path):
    "The real entry point in its own process, with a registry entry added whose technique raises."
    r = subprocess.run([sys.executable, "-c", _CLI_WITH_AN_IMPOSSIBLE_TECHNIQUE, str(tmp_path), "lmcache,impossible,weights"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr[-3000:]
    failed = [l for l in r.stderr.splitlines() if l.startswith("failed:")]
    assert len(failed) == 1
    assert failed[0].startswith("failed: impossible:snapkv@1.5: KVMethodError: compression ratio 1.5 is outside [0, 1)")
    res = json.loads((tmp_path / "results.json").read_text())
    assert [x["source"] for x in res["rows"]] == ["lmcache:lmcache", "impossible:snapkv@1.5", "weights:default26"]
    assert [f["technique"] for f in res["failed"]] == ["impossible:snapkv@1.5"]
    assert "3 rows, 1 failed" in r.stdout


def test_cli_exit_status_zero_and_wrong_group(tmp_path):
    from typer.testing import CliRunner
    from stage1_cascade.cli import app
    r = CliRunner().invoke(app, ["compress-bench", "--out", str(tmp_path / "ok"), "--only", "lmcache,weights"])
    assert r.exit_code == 0 and "2 rows, 0 failed" in r.stdout and "failed:" not in r.stderr
    r = CliRunner().invoke(app, ["compress-bench", "--out", str(tmp_path / "bad"), "--only", "lmcache,nope"])
    assert r.exit_code == 1 and isinstance(r.exception, PlanError)
    assert "unknown technique groups ['nope']: allowed ['kv'," in str(r.exception)
    assert not (tmp_path / "bad" / "results.json").exists()  # refused before anything ran


def test_claims_are_looked_up_not_invented():
    assert P.claim_for("ExpectedAttentionPress@0.5") == "60% KV reduction, 0% accuracy loss"
    assert P.claim_for("something new") == ""


def test_bad_mode(tmp_path):
    with pytest.raises(PlanError, match="'tpu'"):
        P.compress_bench(tmp_path, mode="tpu")
