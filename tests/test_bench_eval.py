"`bench.evaluate` under faults: a VLM server killed mid-run, and an interrupted run resumed."
import json

import pytest

from stage1_cascade.bench import evaluate, metrics_from_predictions, open_stack
from stage1_cascade.cascade import CascadeConfig
from stage1_cascade.data import load_samples

# Route every image through the precision tier, so every image after the kill is affected.
ALWAYS_ESCALATE = CascadeConfig(("stage1", "precision"), {"stage1": (0.0, 1.0)})


@pytest.fixture(scope="module")
def samples():
    return load_samples("synthetic:16:31")


def test_server_killed_mid_run_falls_back_to_stage1(samples, tmp_path):
    kill_at = 6
    with open_stack(ALWAYS_ESCALATE, tiers=("precision",), spawn=True) as stack:
        def on_image(i):
            if i == kill_at: stack.servers["precision"].kill()
        m = evaluate(samples, stack, tmp_path, frontier=False, progress=False, on_image=on_image)
    rows = [json.loads(l) for l in (tmp_path/"predictions.jsonl").read_text().splitlines()]
    assert m["n_decided"] == len(samples) and m["n_skipped"] == 0
    before, after = rows[:kill_at], rows[kill_at:]
    assert all(r["tier"] == "precision" and not r["errors"] for r in before)
    assert all(r["tier"] == "stage1" and "precision" in r["errors"] for r in after)
    assert all(r["prediction"] == r["probs"]["stage1"] for r in after)       # Stage 1's own answer, not 0.5
    assert m["cascade"]["n_answered_by_earlier_tier_after_error"] == len(after)
    assert m["top_tier_only"]["n_missing"] == len(after)
    assert all(0 <= r["prediction"] <= 1 for r in rows)


def test_interrupted_run_resumes(samples, tmp_path):
    cfg = CascadeConfig(("stage1",))
    with open_stack(cfg, tiers=()) as stack:
        class Stop(Exception): pass
        def stop_at_5(i):
            if i == 5: raise Stop
        with pytest.raises(Stop):
            evaluate(samples, stack, tmp_path, frontier=False, progress=False, on_image=stop_at_5)
        assert len((tmp_path/"predictions.jsonl").read_text().splitlines()) == 5   # nothing lost
        m = evaluate(samples, stack, tmp_path, frontier=False, progress=False, resume=True)
    ids = [json.loads(l)["id"] for l in (tmp_path/"predictions.jsonl").read_text().splitlines()]
    assert ids == [s.id for s in samples]                                         # each image once, in order
    assert m == {**metrics_from_predictions(tmp_path/"predictions.jsonl", ["stage1"]), **{k: m[k] for k in m
                 if k in ("wall_s", "standin_tiers", "config", "frontier_points", "ratios")}}
