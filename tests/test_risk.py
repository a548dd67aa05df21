"""Risk-controlled routing (issue 13): a guarantee calibrated on one set, checked on others.

Exchangeability is broken on purpose (a calibration set drawn where the tiers are far more accurate
than on the test images) and the report must name the violation, in the module's report and in
what `eval` writes; the CLI writes the guarantee with the calibration set's hash and `eval` checks
it on real images through the stand-in tiers. Tier probabilities in the first tests are SIMULATED
(Beta draws, `cascade.simulated_tier_probs`), not model outputs."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stage1_cascade.bench import _metrics_and_rounds, guarantee_check
from stage1_cascade.cascade import Cascade, CascadeConfig, simulated_tier_probs
from stage1_cascade.risk import RiskError, calibration_set_hash, check_routing, report_lines, risk_thresholds

SCRIPT = Path(sys.executable).with_name("stage1-cascade")
EASY = {"stage1": (8.0, 1.0), "fast": (8.0, 1.0), "power": (10.0, 1.0), "precision": (12.0, 1.0)}  # far more accurate tiers
ROUTE = ("stage1", "power", "precision")


def _share(P, y, share):
    "The draws subsampled, in order, so that `share` of them are roadwork."
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if share >= 0.5: neg = neg[:int(len(pos) * (1 - share) / share)]
    else: pos = pos[:int(len(neg) * share / (1 - share))]
    ix = np.sort(np.r_[pos, neg])
    return {t: v[ix] for t, v in P.items()}, y[ix]

# a calibration set unlike the test images, and a draw of images like it (seed): the tiers far more accurate, or roadwork rare
SHIFTS = {"easier tiers": lambda seed: simulated_tier_probs(2000, seed, params=EASY),
          "rare roadwork": lambda seed: _share(*simulated_tier_probs(5000, seed), 0.1)}


@pytest.fixture(scope="module")
def shifted():
    "A routing certified at alpha = 0.05 on the easier source, and test images from the usual one."
    return risk_thresholds(*SHIFTS["easier tiers"](11), 0.05, 0.1, tiers=ROUTE), simulated_tier_probs(3000, 12)


@pytest.mark.parametrize("shift", SHIFTS)
def test_a_shifted_calibration_set_shows_as_a_violation(shift):
    cfg = risk_thresholds(*SHIFTS[shift](11), 0.05, 0.1, tiers=ROUTE)
    rep = check_routing(cfg, *simulated_tier_probs(3000, 12))
    assert rep["violations"], rep["tiers"]
    for t in rep["violations"]:
        d = rep["tiers"][t]
        assert d["status"] == "violated" and d["ci"][0] > cfg.guarantee["alpha"], d   # the whole interval above alpha
    lines = report_lines(rep)
    assert lines[0].startswith("guarantee alpha=0.05: VIOLATED at "), lines
    assert any(l.split()[:1] == [rep["violations"][0]] and l.endswith("VIOLATED") for l in lines), lines
    same = check_routing(cfg, *SHIFTS[shift](13))               # images exchangeable with the calibration set
    assert same["violations"] == [] and all(d.get("status") in (None, "holds", "no exits") for d in same["tiers"].values()), same


def _rows(cfg, P, y):
    "predictions.jsonl rows as `evaluate` writes them, from the router deciding on table lookups (image = its index)."
    tier = lambda t: (lambda i: float(P[t][i]))
    c = Cascade(tier("stage1"), {t: tier(t) for t in cfg.tiers[1:]}, cfg)
    rows = []
    for i in range(len(y)):
        d = c.decide(i)
        tried = [t for t in cfg.tiers if t in d.model_ms]
        rows.append(dict(id=f"im{i}", label=int(y[i]), prediction=d.p, tier=d.tier, probs=d.probs, latency_ms=d.latency_ms,
                         model_ms=d.model_ms, errors=d.errors, deadline_hit=d.deadline_hit, last_tier_tried=tried[-1],
                         stage1_only=d.probs.get("stage1")))
    return rows


def test_eval_metrics_name_the_violation(shifted):
    cfg, (P, y) = shifted
    P, y = {t: v[:800] for t, v in P.items()}, y[:800]
    rows = _rows(cfg, P, y)
    m, _ = _metrics_and_rounds(rows, list(cfg.tiers))
    g = guarantee_check(rows, cfg)
    direct = check_routing(cfg, P, y)                           # the same images replayed by `simulate`
    assert g["alpha"] == 0.05 and g["check"]["violations"] == direct["violations"] != []
    for t, d in g["check"]["tiers"].items():
        assert (d["n_exits"], d["n_wrong"]) == (direct["tiers"][t]["n_exits"], direct["tiers"][t]["n_wrong"])
        assert m["cascade"]["exit_error"]["tiers"][t]["n_exits"] == d["n_exits"]
    json.dumps(g), json.dumps(m["cascade"]["exit_error"])       # metrics.json must hold them


def test_a_budget_the_guarantee_cannot_meet_is_reported():
    P, y = simulated_tier_probs(1500, 21)
    cfg = risk_thresholds(P, y, 0.02, 0.1, budget=0.05)
    r = cfg.meta["risk"]
    assert r["conflict"] and r["binding"] == "alpha" and r["summary"].startswith("conflict: holding alpha=0.02")
    assert cfg.meta["calibration"]["vlm_calls_per_image"] > 0.05 and cfg.guarantee["alpha"] == 0.02   # the guarantee is kept
    with pytest.raises(RiskError, match="delta=0"):
        risk_thresholds(P, y, 0.1, 0)


def cli(*args, timeout=900):
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def test_calibrate_risk_writes_the_guarantee_and_eval_checks_it(tmp_path):
    from stage1_cascade.datasets import load_samples
    out = tmp_path/"risk.yaml"
    r = cli("calibrate", "--risk", "0.2", "--delta", "0.1", "--tiers", "stage1,power,precision", "--data", "synthetic:160:7002", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(out.read_text())
    g = cfg["guarantee"]
    cal = load_samples("synthetic:160:7002")
    assert (g["alpha"], g["delta"], g["budget"], g["n_calibration"]) == (0.2, 0.1, None, 160)
    assert g["calibration_set_sha256"] == calibration_set_hash([s.image for s in cal], [s.label for s in cal])
    said = " ".join(r.stdout.split())
    assert "guarantee: at " in said and "at most alpha=0.2, with probability >= 0.9" in said and g["calibration_set_sha256"][:12] in said, r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout

    e = cli("eval", "--data", "synthetic:40:7001", "--config", out, "--out", tmp_path/"run", "--no-frontier", "--no-progress")
    assert e.returncode == 0, e.stderr[-2000:]
    m = json.loads((tmp_path/"run"/"metrics.json").read_text())
    chk = m["guarantee"]["check"]
    rows = [json.loads(l) for l in (tmp_path/"run"/"predictions.jsonl").read_text().splitlines()]
    for t, d in chk["tiers"].items():
        mine = [x for x in rows if x["tier"] == t]
        assert d["n_exits"] == len(mine) and d["n_wrong"] == sum(int(x["prediction"] > 0.5) != x["label"] for x in mine)
        if t in g["tiers"]: assert d["status"] in ("holds", "above alpha, within its interval", "violated", "no exits")
    assert "guarantee alpha=0.2: " in e.stdout and "exit error per tier" in e.stdout, e.stdout
    assert max(map(len, e.stdout.splitlines())) <= 80, e.stdout
