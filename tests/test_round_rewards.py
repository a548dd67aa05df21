"""`natix_round_rewards` against a straightforward replay of the validator's tracker with scikit-learn.

The reference below keeps the last 100 raw answers per round, cuts the 100- and 10-windows, drops the
-1 entries, rounds with `np.round`, and computes the tracker's six metrics with scikit-learn inside one
try/except (any exception: every metric of that window is 0). It is written independently of the
package's window logic, so a disagreement on any stream is a bug in one of them."""
import warnings
from collections import deque

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score,
                             roc_auc_score)

from stage1_cascade.scoring import ema_score, natix_round_rewards


def _tracker_metrics(preds, labels, window):
    preds, labels = list(preds)[-window:], list(labels)[-window:]
    keep = [i for i, p in enumerate(preds) if p != -1]
    probs = np.array([preds[i] for i in keep], dtype=float)
    y = np.array([labels[i] for i in keep])
    if len(y) == 0: return {"accuracy": 0.0, "mcc": 0.0}
    yhat = np.round(probs)
    try:
        acc = accuracy_score(y, yhat)
        precision_score(y, yhat, zero_division=0); recall_score(y, yhat, zero_division=0); f1_score(y, yhat, zero_division=0)
        m = max(0, matthews_corrcoef(y, yhat)) if len(np.unique(y)) > 1 else 0.0
        if len(np.unique(y)) > 1: roc_auc_score(y, probs)
    except Exception:
        return {"accuracy": 0.0, "mcc": 0.0}
    return {"accuracy": acc, "mcc": m}


def _reference_rewards(y, p, exponent=3.0):
    hist_p, hist_y, out = deque(maxlen=100), deque(maxlen=100), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, ans in zip(y, p):
            hist_p.append(ans); hist_y.append(label)
            m100, m10 = _tracker_metrics(hist_p, hist_y, 100), _tracker_metrics(hist_p, hist_y, 10)
            if ans == -1: out.append(0.0); continue
            r = 0.5 * m100["mcc"] + 0.5 * m10["accuracy"]
            r *= 0.0 if (ans < 0.0 or ans > 1.0) else 1.0
            out.append(r ** exponent)
    return np.array(out)


def _stream(n, seed):
    "Labels with long runs (one-class windows happen) and answers mixing good, bad, missing and broken values."
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n), rng.integers(1, 14, n))[:n]
    good = np.clip(y + rng.normal(0, 0.35, n) * np.where(y == 1, -1, 1), 0, 1)   # mostly right, sometimes wrong
    p = good.copy()
    kinds = rng.choice(["good", "none", "nan", "over12", "over16", "neg07", "neg05", "neg02", "half"], n,
                       p=[0.84, 0.05, 0.01, 0.025, 0.01, 0.01, 0.01, 0.01, 0.035])
    poison = np.isin(kinds, ["nan", "over16", "neg07"])
    kinds[poison & ((np.arange(n) < 120) | (np.arange(n) >= 190))] = "good"   # clean MCC windows before and after
    p[kinds == "none"] = -1; p[kinds == "nan"] = np.nan; p[kinds == "over12"] = 1.2; p[kinds == "over16"] = 1.6
    p[kinds == "neg07"] = -0.7; p[kinds == "neg05"] = -0.5; p[kinds == "neg02"] = -0.2; p[kinds == "half"] = 0.5
    return y, p


@pytest.mark.parametrize("seed", [0])
def test_random_stream_matches_sklearn_replay(seed):
    y, p = _stream(320, seed)
    got, want = natix_round_rewards(y, p), _reference_rewards(y, p)
    assert np.allclose(got, want, atol=1e-12), np.flatnonzero(~np.isclose(got, want, atol=1e-12))[:10]
    # the stream exercises what it is meant to: poisoned rounds, penalties and real rewards all occur
    assert (got == 0).sum() > 20 and (got > 0.3).sum() > 80 and ((got > 0) & (got < 0.2)).sum() > 50


def test_single_label_window_with_stray_class_is_not_poisoned():
    "All labels 1 and answers rounding to {1, 2}: sklearn sees two values including 1 and raises nothing."
    y = np.ones(12, int)
    p = np.full(12, 0.9); p[5] = 1.6
    got, want = natix_round_rewards(y, p, cube=False), _reference_rewards(y, p, exponent=1.0)
    assert np.allclose(got, want)
    assert got[6] == pytest.approx(0.5 * 6 / 7)        # rounds 0-6: the 2 counts as one wrong answer of 7
    assert got[5] == 0.0                               # its own round: the out-of-range penalty


def test_ema_matches_the_recursion():
    r = np.random.default_rng(3).random(300)
    s, want = 0.2, []
    for v in r: s = 0.05 * v + 0.95 * s; want.append(s)
    assert np.allclose(ema_score(r, start=0.2), want, atol=1e-12)
