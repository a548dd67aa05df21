"KV compression (compression.kv): errors before running, byte counting, SparK vs channel pruning at equal bytes."
import math, os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pytest, torch
from transformers import DynamicCache, QuantizedCache

from stage1_cascade.compression.kv import (KVMethodError, KVIncompatibleError, METHODS, SparKPress, bench_kv,
    cache_breakdown, cache_nbytes, capture_attention, channel_prune_errors, check_ratio, make_twin, measure,
    quanto_cache, reference, spark_keep_count, spark_recover, spark_sparsify)

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {a: make_twin("llama", attn_implementation=a, models_dir=d) for a in ("sdpa", "eager")}

@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 2048, (1, 128), generator=torch.Generator().manual_seed(1))

def test_twin_round_trip(twins):
    assert (twins["sdpa"].twin_path/"config.json").exists()
    assert torch.equal(twins["sdpa"].lm_head.weight, twins["eager"].lm_head.weight)

@pytest.mark.parametrize("bad", [1.0, -0.01, float("nan"), "0.5", True])
def test_bad_ratio(bad):
    with pytest.raises(KVMethodError, match="outside"): check_ratio(bad)

def test_unknown_method_names_allowed(twins, ids):
    with pytest.raises(KVMethodError) as e: measure("h2o", 0.5, twins["sdpa"], ids)
    assert "'snapkv'" in str(e.value) and "'h2o'" in str(e.value)

def test_attention_mismatch_is_clear_and_early(twins, ids):
    with pytest.raises(KVIncompatibleError, match="observed_attention.*sdpa.*attn_implementation='eager'"):
        measure("observed_attention", 0.5, twins["sdpa"], ids)
    with pytest.raises(KVIncompatibleError, match="adakv.*eager.*attn_implementation='sdpa'"):
        measure("adakv_expected_attention", 0.5, twins["eager"], ids)
    with pytest.raises(KVIncompatibleError, match="longer than 64"):
        measure("snapkv", 0.5, twins["sdpa"], ids[:, :40])

def test_bytes_and_fidelity_rows(twins, ids):
    m = twins["sdpa"]; ref = reference(m, ids, 4)
    cfg = m.config; dense = 2*cfg.num_hidden_layers*cfg.num_key_value_heads*ids.shape[1]*cfg.head_dim*2
    assert ref["bytes"] == dense
    base = measure("none", 0, m, ids, 4, ref=ref)
    assert base["top1_agreement"] == 1.0 and base["kl"] < 1e-6
    for r in (0.25, 0.5):
        row = measure("knorm", r, m, ids, 4, ref=ref)
        assert row["bytes_after"] == int(dense*(1 - r)), row
        assert row["kl"] > 0       # evicting tokens changes the next-token distribution
    q4, q2 = (measure(f"quanto_int{b}", 0, m, ids, 4, ref=ref) for b in (4, 2))
    # 4 (2) bits per value + a bf16 scale and a bf16 zero point per group of 32 values
    assert q4["bytes_after"] == dense//2*(4/8 + 4/32) and q2["bytes_after"] == dense//2*(2/8 + 4/32)
    combo = measure("snapkv+quanto_int4", 0.5, m, ids, 4, ref=ref)
    assert combo["bytes_after"] == q4["bytes_after"]//2

def test_cache_factory_and_kv_nbytes(twins, ids):
    class Counted(DynamicCache):
        def kv_nbytes(self): return 7
    row = measure("none", 0, twins["sdpa"], ids, 2, cache_factory=lambda m: Counted(), technique="x", family="kv-cache")
    assert (row["bytes_after"], row["technique"], row["family"]) == (7, "x", "kv-cache")

def test_spark_beats_channel_pruning_at_equal_bytes(twins, ids):
    cap = capture_attention(twins["sdpa"], ids, layer_idx=1)
    for r in (0.25, 0.5, 0.75):
        res = channel_prune_errors(cap, r)
        assert res["spark_mean"]["key_bytes"] <= res["think"]["key_bytes"]
        assert res["spark_mean"]["logit_err"] < res["think"]["logit_err"]
        assert res["spark_mean"]["out_err"] < res["think"]["out_err"]

def test_spark_mean_recovery_never_worse_on_keys():
    k = torch.randn(1, 2, 64, 32) + torch.linspace(-2, 2, 32)   # channels with offsets
    w = torch.rand(1, 2, 32)
    pm, kept, mu = spark_sparsify(k, w, 12, "mean")
    pz, _, mz = spark_sparsify(k, w, 12, "zero")
    em, ez = (spark_recover(pm, kept, mu, 32) - k).norm(), (spark_recover(pz, kept, mz, 32) - k).norm()
    assert em < ez

def test_spark_press_holds_packed_bytes(twins, ids):
    row = measure("spark", 0.5, twins["sdpa"], ids, 3)
    d = twins["sdpa"].config.head_dim; keep = spark_keep_count(d, ids.shape[1], 0.5, 2)
    cfg = twins["sdpa"].config; L, H, T = cfg.num_hidden_layers, cfg.num_key_value_heads, ids.shape[1]
    expect = L*H*(T*d*2 + T*keep*2 + T*math.ceil(d/8) + d*2)   # values + kept keys + bitmap + means
    assert row["bytes_after"] == expect

def test_bench_rows_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("S1C_MODELS_DIR", str(tmp_path))
    rows = bench_kv("qwen3", ratios=(0.75,), methods=["streaming_llm", "quanto_int4"], n_ctx=96, n_decode=2, progress=False)
    keys = {"technique", "family", "reduces", "where", "bytes_before", "bytes_after", "bytes_ratio",
            "top1_agreement", "kl", "prefill_s", "plan_claim", "note"}
    assert len(rows) == 2 and all(keys <= set(r) for r in rows)
    assert rows[0]["needle_kept"] == 0.0          # StreamingLLM at 0.75 drops the middle of the context
    with pytest.raises(KVMethodError): bench_kv("qwen3", ratios=(1.5,))
