"""The miner service's promise, "always a valid answer, failures counted", checked over real HTTP
(uvicorn on loopback) when its parts fail. The failing parts are small classes that raise or stall
on purpose (the only simulated pieces); Stage 1 is the shipped one where it should answer, and the
VLM tier is a real stand-in server whose faults are set through its admin API."""
import base64, math, threading, time

import httpx
import numpy as np
import pytest

from stage1_cascade.cascade import CascadeConfig
from stage1_cascade.detect import default_stage1
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.serve.metrics import parse_metrics
from stage1_cascade.serve.miner import MinerError, MinerLimits, MinerServer, MinerService, read_key
from stage1_cascade.standin.server import StandinServer


@pytest.fixture(scope="module")
def stage1(): return default_stage1()


@pytest.fixture(scope="module")
def images(): return [base64.b64encode(s.image).decode() for s in synthetic_samples(12, seed=4100)]


class BrokenStage1:
    "A Stage 1 whose forward pass raises (a bug, an out-of-memory)."
    def predict_many(self, imgs): raise RuntimeError("CUDA error: out of memory (simulated)")


class StuckStage1:
    "A Stage 1 whose forward pass does not return until the test releases it."
    def __init__(self): self.release = threading.Event()
    def predict_many(self, imgs): self.release.wait(60); return np.full(len(imgs), 0.5)


class NaNTier:
    "A VLM tier that answers NaN, then a value outside [0, 1]."
    def __init__(self): self.n = 0
    def p_roadwork(self, img, timeout_s=None):
        self.n += 1
        return math.nan if self.n % 2 else 7.5


def _valid(body): return isinstance(body.get("prediction"), float) and 0 <= body["prediction"] <= 1


def _escalating():
    "A routing where every image goes on to the power tier (Stage 1's exit band is empty)."
    return CascadeConfig(("stage1", "power"), {"stage1": (0.0, 1.0)})


def test_a_failing_stage1_still_answers_in_time(images):
    "Stage 1 raising: the routing's constant, counted as a tier error; Stage 1 stuck: the same before the caller's deadline, a deadline fallback."
    for part, reason in ((BrokenStage1(), "tier_error"), (StuckStage1(), "deadline")):
        with MinerServer(MinerService(part)) as srv:
            r = httpx.post(srv.url + "/v1/predict", json={"image": images[0], "deadline_s": 2.0}, timeout=30)
            if isinstance(part, StuckStage1): part.release.set()   # answered while Stage 1 was still stuck
            assert r.status_code == 200 and _valid(r.json()) and r.json()["tier"] == "fallback", r.text
            m = parse_metrics(httpx.get(srv.url + "/metrics").content)
            assert m['stage1_miner_answers_total{tier="fallback"}'] == 1.0
            assert m[f'stage1_miner_fallbacks_total{{reason="{reason}"}}'] == 1.0
            assert m["stage1_miner_deadline_hits_total"] == float(reason == "deadline")


def test_a_tier_answering_nan_or_out_of_range_never_leaves(stage1, images):
    "NaN and 7.5 from the VLM tier: the cascade refuses or clips them; every answer is valid, none counted as invalid."
    with MinerServer(MinerService(stage1, {"power": NaNTier()}, _escalating())) as srv:
        outs = [httpx.post(srv.url + "/v1/predict", json={"image": im}, timeout=30).json() for im in images[:4]]
        assert all(_valid(o) for o in outs), outs
        m = parse_metrics(httpx.get(srv.url + "/metrics").content)
        assert m["stage1_miner_invalid_answers_total"] == 0.0
        assert m['stage1_miner_fallbacks_total{reason="tier_error"}'] >= 2.0   # the NaN answers


def test_a_dead_tier_is_not_ready_and_answers_come_from_stage1(stage1, images):
    "The first VLM tier dead: /ready 503; answers still valid, from Stage 1, each counted as a tier error."
    with StandinServer("detect:power", model_name="standin-power") as power:
        client = power.client(timeout_s=2.0)
        with MinerServer(MinerService(stage1, {"power": client}, _escalating())) as srv:
            assert httpx.get(srv.url + "/ready").json()["ready"] is True
            power.set_faults(dead=True)
            r = httpx.get(srv.url + "/ready")
            assert (r.status_code, r.json()["ready"]) == (503, False)
            outs = [httpx.post(srv.url + "/v1/predict", json={"image": im}, timeout=30).json() for im in images[:3]]
            assert [o["tier"] for o in outs] == ["stage1"] * 3 and all(_valid(o) for o in outs)
            m = parse_metrics(httpx.get(srv.url + "/metrics").content)
            assert m['stage1_miner_fallbacks_total{reason="tier_error"}'] == 3.0
            assert m['stage1_miner_requests_total{outcome="fallback"}'] == 3.0


def test_limits_refuse_before_any_work(stage1, images):
    "A streamed body over the cap (no Content-Length), too many images, a bad deadline: refused, counted as rejected."
    svc = MinerService(stage1, limits=MinerLimits(max_body_bytes=50_000, max_images=2))
    with MinerServer(svc) as srv:
        def chunks():
            for _ in range(10): yield b"x" * 10_000
        r = httpx.post(srv.url + "/v1/predict", content=chunks(), timeout=30)
        assert (r.status_code, r.json()["error"]["reason"]) == (413, "too_large")
        r = httpx.post(srv.url + "/v1/predict", json={"images": images[:3]}, timeout=30)
        assert (r.status_code, "at most 2" in r.json()["error"]["message"]) == (400, True)
        r = httpx.post(srv.url + "/v1/predict", json={"image": images[0], "deadline_s": 1e9}, timeout=30)
        assert r.status_code == 400
        m = parse_metrics(httpx.get(srv.url + "/metrics").content)
        assert m['stage1_miner_requests_total{outcome="rejected"}'] == 3.0
        assert m['stage1_miner_requests_total{outcome="answered"}'] == 0.0


def test_key_rules(tmp_path, stage1, monkeypatch):
    "A key from a file (first line), else the environment; beyond loopback a key is required and must be long."
    f = tmp_path/"key"; f.write_text("k" * 24 + "\nignored\n")
    assert read_key(f) == "k" * 24
    monkeypatch.setenv("S1C_MINER_KEY", "from-the-environment-0001")
    assert read_key(None) == "from-the-environment-0001"
    with pytest.raises(MinerError, match="does not exist"): read_key(tmp_path/"nope")
    (tmp_path/"empty").write_text("\n")
    with pytest.raises(MinerError, match="empty"): read_key(tmp_path/"empty")
    with pytest.raises(MinerError, match="API key is required"): MinerService(stage1, host="0.0.0.0")
    with pytest.raises(MinerError, match="shorter than 16"): MinerService(stage1, host="0.0.0.0", key="short")
