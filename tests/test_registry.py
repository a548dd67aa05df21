"""The cascade through a registry: the evaluation stack reads S1C_REGISTRY instead of one URL per tier,
a tier never asks a server the registry marks failed, and the router counts a sleeping model's wake
against the deadline (a wake that cannot finish in time is not attempted; Stage 1's answer stands).
Stand-in servers run in threads here (the fleet's processes are tested in test_fleet.py)."""
import math, time

import httpx
import pytest
from PIL import Image, ImageDraw

from stage1_cascade.cascade import Cascade, CascadeConfig
from stage1_cascade.core import get_settings
from stage1_cascade.serve.registry import DirectWaker, ModelEntry, Registry, TierGroup, registry_tiers
from stage1_cascade.standin.backends import orange_scorer
from stage1_cascade.standin.process import ApiKey, SleepMode, SleepSim
from stage1_cascade.standin.server import StandinServer


def cone():
    im = Image.new("RGB", (224, 224), (120, 120, 120))
    ImageDraw.Draw(im).polygon([(100, 200), (124, 200), (112, 150)], fill=(255, 110, 0))
    return im


@pytest.fixture
def servers(tmp_path):
    key = "test-key-123456"
    (tmp_path/"api_key").write_text(key); (tmp_path/"api_key").chmod(0o600)
    ext = lambda gb: [ApiKey([key]), SleepMode(SleepSim(weight_bytes=gb * 1e9))]
    srv = {"awake": StandinServer(orange_scorer, "awake", extensions=ext(1)).start(),
           "broken": StandinServer(orange_scorer, "broken", extensions=ext(1)).start(),
           "sleeper": StandinServer(orange_scorer, "sleeper", extensions=ext(50)).start()}   # a 2 s wake at 25 GB/s
    httpx.post(srv["sleeper"].url + "/sleep?level=1")
    yield tmp_path, srv
    for s in srv.values(): s.stop()


def write(tmp_path, srv, states, tier="power"):
    reg = Registry([ModelEntry(m, tier, srv[m].url, m, states[m], 1, m == "sleeper", 2.0 if m == "sleeper" else None)
                    for m in ("broken", "awake", "sleeper")], api_key_file=str(tmp_path/"api_key"))
    reg.save(tmp_path/"registry.json")
    return tmp_path/"registry.json"


def test_open_stack_uses_the_registry(servers):
    from stage1_cascade.bench import open_stack
    tmp, srv = servers
    path = write(tmp, srv, {"broken": "failed", "awake": "healthy", "sleeper": "sleeping"})
    with open_stack(settings=get_settings(registry=path, tier_routing="first")) as stack:
        assert isinstance(stack.clients["power"], TierGroup) and stack.servers is None
        d = stack.cascade().decide(cone())
        assert 0 <= d.p <= 1 and not d.errors
        assert stack.clients["power"].stats["by_model"].get("broken") is None   # a failed server is never asked


def test_fuse_asks_every_awake_model_and_first_one(servers):
    tmp, srv = servers
    path = write(tmp, srv, {"broken": "healthy", "awake": "healthy", "sleeper": "sleeping"})
    first, fuse = (TierGroup("power", path, routing=r) for r in ("first", "fuse"))
    a, b = first.p_roadwork(cone()), fuse.p_roadwork(cone())
    assert (a.model, first.stats["calls"]) == ("broken", 1)
    assert (b.source, sorted(b.model.split("+")), fuse.stats["calls"]) == ("fused", ["awake", "broken"], 2)
    assert math.isclose(a.p, b.p, abs_tol=1e-9)   # same scorer behind both: the mean is that p
    first.close(); fuse.close()


def test_the_router_counts_the_wake_against_the_deadline(servers):
    tmp, srv = servers
    path = write(tmp, srv, {"broken": "failed", "awake": "failed", "sleeper": "sleeping"})
    tiers = registry_tiers(path, DirectWaker(path))
    cfg = lambda deadline: CascadeConfig(("stage1", "power"), {"stage1": (0.0, 1.0)}, deadline_s=deadline, margin_s=0.5)
    d = Cascade(lambda img: 0.55, tiers, cfg(2.0)).decide(cone())   # a 2 s wake in a 1.5 s budget: not attempted
    assert (d.tier, d.p, d.deadline_hit) == ("stage1", 0.55, True) and "after a wake of ~2.000 s" in d.errors["power"]
    assert httpx.get(srv["sleeper"].url + "/is_sleeping").json()["is_sleeping"] is True
    t0 = time.perf_counter()
    d = Cascade(lambda img: 0.55, tiers, cfg(9.0)).decide(cone())   # it fits in 8.5 s: woken, then asked
    assert d.tier == "power" and not d.errors and time.perf_counter() - t0 >= 2.0
    assert tiers["power"].stats["wakes"] == 1 and tiers["power"].stats["wake_s"][0] >= 2.0
    tiers["power"].close()
