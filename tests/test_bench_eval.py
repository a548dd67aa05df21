"`bench.evaluate` under faults: a VLM server killed mid-run, an interrupted run resumed (a torn last line too)."
import json

import numpy as np
import pytest

from stage1_cascade.bench import BenchError, evaluate, metrics_from_predictions, open_stack
from stage1_cascade.cascade import CascadeConfig
from stage1_cascade.datasets import load_samples
from stage1_cascade.scoring import natix_round_rewards

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
    # the top-tier baseline keeps every image: the dead server's images are wrong answers and -1 rounds
    top = m["top_tier_only"]
    assert top["n_images"] == len(samples) and top["n_answered"] == kill_at
    right = sum(int(r["top_tier_only"] > 0.5) == r["label"] for r in before)
    assert top["accuracy"] == pytest.approx(right / len(samples))
    streams = json.loads((tmp_path/"rounds.json").read_text())["predictors"]
    assert streams["top_tier_only"]["answers"][kill_at:] == [-1.0] * len(after)
    assert streams["top_tier_only"]["rewards"][kill_at:] == [0.0] * len(after)
    assert top["per_round"]["mean_reward"] == pytest.approx(np.mean(streams["top_tier_only"]["rewards"]))


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
                 if k in ("wall_s", "standin_tiers", "config", "frontier_points", "ratios", "gpu_cost_estimate")}}


def test_resume_after_a_torn_last_line(samples, tmp_path):
    "A run killed while writing a line: --resume drops the torn line, redoes that image, and scores every image once."
    cfg = CascadeConfig(("stage1",))
    pred = tmp_path/"predictions.jsonl"
    with open_stack(cfg, tiers=()) as stack:
        class Stop(Exception): pass
        def stop_at_7(i):
            if i == 7: raise Stop
        with pytest.raises(Stop):
            evaluate(samples, stack, tmp_path, frontier=False, progress=False, on_image=stop_at_7)
        lines = pred.read_text().splitlines()
        pred.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])   # the 7th row cut mid-write
        with pytest.raises(BenchError, match="eval --resume"):
            metrics_from_predictions(pred)                                  # not readable as it is
        m = evaluate(samples, stack, tmp_path, frontier=False, progress=False, resume=True)
    rows = [json.loads(l) for l in pred.read_text().splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in samples]                # the torn image redone, each image once
    assert m["n_decided"] == len(samples)
    y = [r["label"] for r in rows]
    assert m["cascade"]["per_round"]["mean_reward"] == pytest.approx(natix_round_rewards(y, [r["prediction"] for r in rows]).mean())


def test_resume_refuses_a_torn_line_in_the_middle(samples, tmp_path):
    pred = tmp_path/"predictions.jsonl"
    good = json.dumps({"id": samples[0].id, "label": samples[0].label, "prediction": 0.2})
    pred.write_text(good + "\n" + good[:20] + "\n" + good + "\n")
    with open_stack(CascadeConfig(("stage1",)), tiers=()) as stack:
        with pytest.raises(BenchError, match="line 2 of 3"):
            evaluate(samples, stack, tmp_path, frontier=False, progress=False, resume=True)
    assert pred.read_text().count("\n") == 3                                # the file is left as it was
