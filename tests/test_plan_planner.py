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
