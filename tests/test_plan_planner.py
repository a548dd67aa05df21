"Planner: model table, KV/weight formulas against twins and configs (plan.facts), placement, outputs, errors (plan.placement)."
import json, os
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from stage1_cascade.plan import facts as F, placement as P
from stage1_cascade.serve.args import plan


def test_table_has_the_default_26_and_validates():
    t = F.load_models()
    d26 = [m for m in t.values() if m.default26]
    assert len(d26) == 26
    assert {m.tier for m in d26} == set(F.MODEL_TIERS)


def test_bad_rows_are_refused_by_name(tmp_path):
    bad = tmp_path / "m.yaml"
    row = {"id": "x", "name": "x", "tier": "fast", "params_b": 1.0, "layers": 4, "kv_heads": 2, "head_dim": 8,
           "attention": {"kind": "hybrid", "full_layers": 9}, "checkpoints": {"bf16": "x"}}
    bad.write_text(yaml.safe_dump({"models": [row]}))
    with pytest.raises(F.PlanError, match="full_layers 9"):
        F.load_models(bad)
    row["tier"] = "ultra"
    bad.write_text(yaml.safe_dump({"models": [row]}))
    with pytest.raises(F.PlanError, match="'ultra'"):
        F.load_models(bad)


def test_kv_formula_matches_measured_twin_caches():
    cfgs = F.tiny_twin_configs()  # notebook 05a also runs the Qwen2-VL twin; kept out here for time
    for name in ("qwen3", "llama", "gemma3-text"):
        r = F.twin_kv_check(cfgs[name], n_tokens=37)
        assert r["measured_bytes"] > 0
        assert r["formula_bytes"] == r["measured_bytes"], (name, r)


def test_kv_kinds():
    t = F.load_models()
    q = t["qwen3-vl-32b"]
    assert F.kv_bytes_per_token(q)["growing"] == 2 * 64 * 8 * 128 * 2
    assert F.kv_bytes_per_seq(q, 1000, "fp8") == 1000 * 64 * 8 * 128 * 2
    k = t["kimi-vl-a3b"]  # MLA: latent only
    assert F.kv_bytes_per_seq(k, 100) == 100 * (512 + 64) * 27 * 2
    g = t["gemma-3-4b-it"]  # sliding layers stop at window-1 tokens
    small, big = F.kv_bytes_per_seq(g, 8000), F.kv_bytes_per_seq(g, 16000)
    assert big - small == 8000 * 2 * 5 * 4 * 256 * 2
    q35 = F.kv_bytes_per_token(t["qwen3.5-35b-a3b"])
    assert q35["fixed_per_seq"] > 50 * 2**20 and q35["growing"] == 2 * 10 * 2 * 256 * 2


def test_weight_formula_scales_with_precision():
    m = F.load_models()["qwen3-vl-8b"]
    b16, f8, i4 = (F.weight_bytes(m, p)["total"] for p in ("bf16", "fp8", "int4"))
    assert b16 == pytest.approx(2 * 8.8e9)
    assert i4 < f8 < b16
    # int4 pays its group scales: more than half a byte per quantized weight
    body = m.params_b * 1e9 - m.vision_params_b * 1e9 - m.vocab_size * m.hidden_size * 2
    assert F.weight_bytes(m, "int4")["llm"] == pytest.approx(body * 0.5 + body / 128 * 2.5)


def test_default26_on_two_h100_does_not_fit_and_says_so(tmp_path):
    p = plan("2xH100-80GB", "default26", out=tmp_path)
    assert not p.fits_all
    assert p.totals["demand_GB"] > p.totals["capacity_GB"]
    assert "Not everything fits" in p.summary()
    status = {x.model: x for x in p.placements}
    for x in p.placements:
        if x.tier in ("detector", "level2", "fast"):
            assert x.status == "resident", x
    assert p.by_status("sleeping"), "expected sleepers"
    for x in p.placements:
        if x.status == "sleeping":
            assert x.wake_s_estimate == pytest.approx(x.weight_bytes / 25e9, abs=0.01)
    # per-GPU: planned bytes within the card; utilization fractions stack under 1
    for g in p.gpus:
        res = sum(x.gpu_memory_utilization for x in p.placements if x.gpu == g.index and x.status == "resident"
                  and x.gpu_memory_utilization)
        assert res < 1.0
        assert p.totals["used_GB"][g.index] <= g.total_bytes / 1e9
    j = json.loads((tmp_path / "plan.json").read_text())
    assert len(j["placements"]) == 26 and j["fits_all"] is False
    assert (tmp_path / "gpu0.png").stat().st_size > 1000 and (tmp_path / "gpu1.png").exists()
    assert "vllm serve" in (tmp_path / "serve.sh").read_text()
    assert status["qwen3-vl-4b"].checkpoint == "Qwen/Qwen3-VL-4B-Instruct-FP8"


def test_everything_fits_on_a_big_card():
    p = P.make_plan("1xH200-141GB", "qwen3-vl-4b,gemma-3-4b-it", kv_dtype="auto", max_model_len=2048, max_num_seqs=4)
    assert p.fits_all and p.by_status("resident") == ["qwen3-vl-4b", "gemma-3-4b-it"] or \
        sorted(p.by_status("resident")) == ["gemma-3-4b-it", "qwen3-vl-4b"]


def test_fp8_kv_shrinks_the_demand():
    a = P.make_plan("2xH100-80GB", "default26", kv_dtype="auto", max_model_len=32768)
    b = P.make_plan("2xH100-80GB", "default26", kv_dtype="fp8", max_model_len=32768)
    kv = lambda p: {x.model: x.kv_bytes for x in p.placements}
    ka, kb = kv(a), kv(b)
    assert ka["qwen3-vl-8b"] == 2 * kb["qwen3-vl-8b"] and ka["kimi-vl-a3b"] == 2 * kb["kimi-vl-a3b"]
    # Qwen3.5's linear-attention state does not follow --kv-cache-dtype: less than half is saved
    assert kb["qwen3.5-35b-a3b"] > ka["qwen3.5-35b-a3b"] / 2
    assert b.totals["demand_GB"] < a.totals["demand_GB"]


@pytest.mark.parametrize("gpus,models,match", [
    ("2xH100-80GB", "qwen3-vl-72b", "'qwen3-vl-72b'"),
    ("3xB300-288GB", "default26", "'B300-288GB'"),
    ("", "default26", "empty"),
    ("1xL4-24GB", "internvl3.5-38b", "cannot hold even one model"),
])
def test_errors_name_the_value(gpus, models, match):
    with pytest.raises(F.PlanError, match=match):
        P.make_plan(gpus, models)


def test_bad_kv_dtype_and_lengths():
    with pytest.raises(F.PlanError, match="'fp4'"):
        P.make_plan("2xH100-80GB", "default26", kv_dtype="fp4")
    with pytest.raises(F.PlanError, match="max_num_seqs"):
        P.make_plan("2xH100-80GB", "default26", max_num_seqs=0)


# ---- past one card and one host: vLLM's tensor / pipeline parallelism ----
BIG = "qwen3-vl-30b-a3b"  # 36 GB at FP8 with the default KV and margin: larger than an L4 (24 GB)


def _unsplit(model, **kw):
    "The model's one-server footprint, from a card that holds it whole."
    return next(x for x in P.make_plan("1xH200-141GB", model, **kw).placements if x.model == model)


def test_a_model_larger_than_a_card_gets_tensor_parallel_on_one_host(tmp_path):
    p = plan(hosts="2x(2xL4-24GB)", models=f"qwen3-vl-4b,{BIG}", out=tmp_path)
    x = {q.model: q for q in p.placements}[BIG]
    assert (x.status, x.tensor_parallel_size, x.pipeline_parallel_size) == ("resident", 2, 1)
    assert len(x.gpus) == 2 and len({p.locate(g)[0] for g in x.gpus}) == 1 and x.host == p.locate(x.gpus[0])[0]
    assert p.hosts == [[0, 1], [2, 3]] and json.loads((tmp_path / "plan.json").read_text())["hosts"] == [[0, 1], [2, 3]]
    for g in p.gpus:  # every card's planned bytes within the card, the split model's fraction reserved on each of its cards
        assert p.totals["used_GB"][g.index] <= g.total_bytes / 1e9 + 1e-6
    sh = [l for l in (tmp_path / "serve.sh").read_text().splitlines() if f"--served-model-name {BIG}" in l]
    local = ",".join(str(p.locate(g)[1]) for g in x.gpus)
    assert len(sh) == 1 and f"CUDA_VISIBLE_DEVICES={local} nohup" in sh[0] and "--tensor-parallel-size 2" in sh[0]
    assert "split by vLLM" in p.summary() and "2 host(s)" in p.summary()


def test_one_card_per_host_gets_pipeline_parallel_across_two_hosts():
    p = P.make_plan(hosts="2x(1xL4-24GB)", models=BIG)
    x = p.placements[0]
    assert (x.status, x.tensor_parallel_size, x.pipeline_parallel_size, x.gpus) == ("resident", 1, 2, [0, 1])
    assert [p.locate(g)[0] for g in x.gpus] == [0, 1] and p.fits_all


def test_per_card_shares_add_up_to_the_footprint_and_the_extra_margins():
    one, ov = _unsplit(BIG), 2.0 * P.GiB
    for hosts, n in (("1x(2xL4-24GB)", 2), ("2x(1xL4-24GB)", 2), ("2x(2xL4-24GB)", 2)):
        x = P.make_plan(hosts=hosts, models=BIG).placements[0]
        shares = P.card_shares(x)
        assert sorted(shares) == sorted(x.gpus) and len(shares) == n
        total = sum(sum(s.values()) for s in shares.values())
        assert total == pytest.approx(x.footprint_bytes)
        assert total == pytest.approx(one.footprint_bytes + (n - 1) * ov)  # kv_heads 4 >= tp: no KV copied
        assert sum(s["weights"] for s in shares.values()) == pytest.approx(one.weight_bytes)
    # pipeline parallel: the vision encoder on the first stage, whose card then holds the most
    x = P.make_plan(hosts="2x(1xL4-24GB)", models=BIG).placements[0]
    s = P.card_shares(x)
    assert s[0]["weights"] - s[1]["weights"] == pytest.approx(x.vision_bytes)
    # tensor parallel past the KV heads: vLLM copies them, so the KV bytes grow by tp / kv_heads
    spec = F.load_models()[BIG]
    wide = P.split_as(one, spec, 8, 1, list(range(8)))
    assert wide.kv_bytes == pytest.approx(one.kv_bytes * 8 / spec.kv_heads)
    assert not P._tp_fits_heads(8, 12) and P._tp_fits_heads(8, 4) and P._tp_fits_heads(2, 8)


def test_a_split_model_without_room_is_dropped_with_what_it_needed():
    p = P.make_plan(hosts="2x(2xL4-24GB)", models=f"qwen3-vl-4b,{BIG},internvl3.5-38b")
    x = {q.model: q for q in p.placements}["internvl3.5-38b"]
    assert x.status == "dropped" and not p.fits_all
    assert "2 x 1 cards (tensor parallel on host 0)" in x.reason and "2 x 2 cards (pipeline parallel over hosts [0, 1])" in x.reason
    assert "GB free each" in x.reason and "exceeds every card" in x.reason
    # one host of one card: no split at all, and it says why
    q = {y.model: y for y in P.make_plan("1xL40S-48GB", "qwen3-vl-4b,internvl3.5-38b").placements}["internvl3.5-38b"]
    assert q.status == "dropped" and "allow no split" in q.reason


def test_plans_without_a_model_larger_than_a_card_are_unchanged_and_stay_on_host_0():
    p = P.make_plan("2xH100-80GB", "default26")
    assert p.hosts is None and not [x for x in p.placements if x.split]
    assert "gpus" not in p.table()[0] and "host(s)" not in p.summary()
    h = P.make_plan(hosts="2x(1xH100-80GB)")  # the Stage-1 process and the wake slot beside the miner
    assert h.wake_slot["gpu"] == 0 and {x.host for x in h.placements if x.status == "sleeping" or x.tier in F.STAGE1_TIERS} == {0}
    with pytest.raises(P.HostsError, match="give hosts alone"):
        P.make_plan("2xL4-24GB", hosts="2x(2xL4-24GB)")
    with pytest.raises(P.HostsError, match="Nx"):
        P.make_plan(hosts="2x(2xL4-24GB")


def test_old_plan_json_loads_and_the_fleet_refuses_pipeline_parallel(tmp_path):
    from stage1_cascade.serve.fleet import FleetError, fleet_specs, load_plan
    plan("1xH100-80GB", "qwen3-vl-4b,qwen3-vl-8b", out=tmp_path / "old")
    j = json.loads((tmp_path / "old/plan.json").read_text())
    j.pop("hosts")
    for x in j["placements"]:
        for k in ("gpus", "tensor_parallel_size", "pipeline_parallel_size", "host"): x.pop(k)
    (tmp_path / "old/plan.json").write_text(json.dumps(j))
    old = load_plan(tmp_path / "old")
    assert old.hosts is None and [x.cards for x in old.placements if x.port] == [[0], [0]]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in fleet_specs(tmp_path / "old", "gpu", python="/x/python")] == ["0", "0"]
    plan(hosts="2x(2xL4-24GB)", models=BIG, out=tmp_path / "tp")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in fleet_specs(tmp_path / "tp", "gpu", python="/x/python")] == ["0,1"]
    plan(hosts="2x(1xL4-24GB)", models=BIG, out=tmp_path / "pp")
    assert load_plan(tmp_path / "pp").placements[0].pipeline_parallel_size == 2
    with pytest.raises(FleetError, match="Ray cluster"):
        fleet_specs(tmp_path / "pp", "gpu", python="/x/python")
