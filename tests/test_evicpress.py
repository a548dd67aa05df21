"EVICPRESS simulation: labelled, deterministic, sane against its baselines; bad inputs refused."
import pytest
from stage1_cascade.compression import evicpress as P
from stage1_cascade.plan.facts import PlanError


def test_simulation_is_labelled_and_deterministic():
    tr = P.make_trace(n_requests=600, seed=3)
    a = P.simulate_evicpress(tr, P.SimParams(), "evicpress")
    b = P.simulate_evicpress(P.make_trace(n_requests=600, seed=3), P.SimParams(), "evicpress")
    assert a["simulation"] is True and "SIMULATION" in a["label"]
    assert a["mean_ttft_s"] == b["mean_ttft_s"]
    assert sum(a["served_from"].values()) == 600


def test_policies_behave_as_designed():
    tr = P.make_trace(n_requests=800, seed=1)
    sp = P.SimParams(gpu_gb=2.0)
    ev, lru, co = (P.simulate_evicpress(tr, sp, p) for p in ("evicpress", "lru", "compress-only"))
    assert lru["mean_quality_loss"] == 0.0                # evict-only never compresses
    assert co["mean_quality_loss"] == pytest.approx(0.02)  # compress-only pays its fixed ratio's loss
    assert co["served_from"]["cpu"] == co["served_from"]["disk"] == 0
    assert ev["utility"] >= lru["utility"] - 1e-9 or ev["mean_ttft_s"] < lru["mean_ttft_s"]
    # a bigger GPU tier never makes LRU slower
    big = P.simulate_evicpress(tr, P.SimParams(gpu_gb=64.0), "lru")
    assert big["mean_ttft_s"] <= lru["mean_ttft_s"]


@pytest.mark.parametrize("kw,match", [({"ratios": (0.0, 1.0), "quality_loss": (0.0, 0.1)}, "1.0"),
                                      ({"ratios": (0.0, 0.5), "quality_loss": (0.0,)}, "same length")])
def test_bad_params(kw, match):
    with pytest.raises(PlanError, match=match):
        P.simulate_evicpress(P.make_trace(n_requests=10), P.SimParams(**kw))


def test_bad_policy():
    with pytest.raises(PlanError, match="'fifo'"):
        P.simulate_evicpress(P.make_trace(n_requests=10), policy="fifo")
