"""GEAR-style KV compression (stage1_cascade.compression.quant): equal-byte comparison with plain
4-bit quantization, honest byte counts, and the cache inside a real transformers forward pass."""
import pytest
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from stage1_cascade.compression.quant import (GEARCache, QuantError, compare_equal_bytes, gear_compress,
                                              plain_at_bytes, quantize_uniform, rel_error)


def _student(seed, shape=(1, 2, 512, 128)):
    torch.manual_seed(seed)
    return torch.distributions.StudentT(3.0).sample(shape)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("axis", [-2, -1])
def test_gear_beats_plain_at_equal_bytes_on_heavy_tails(seed, axis):
    "Heavy-tailed stand-in tensors: GEAR's error is below plain 4-bit given at least GEAR's bytes."
    x = _student(seed)
    r = compare_equal_bytes(x, axis, group=64, rank=2, outlier=0.005)
    assert r["plain_bytes"] >= r["gear_bytes"]
    assert r["gear_err"] < r["plain_err"], r


def test_equal_bytes_baseline_is_the_cheapest_plain_at_or_above_budget():
    x = torch.randn(1, 2, 256, 64)
    g = gear_compress(x, group=64, rank=2, outlier=0.01, axis=-2)
    p = plain_at_bytes(x, g.nbytes(), axis=-2)
    assert p.nbytes() >= g.nbytes()
    coarser = quantize_uniform(x, 4, p.group*2, axis=-2)
    assert coarser.nbytes() < g.nbytes()   # one step coarser would hold fewer bytes than GEAR


def test_nbytes_counts_every_stored_tensor():
    x = torch.randn(2, 2, 128, 32)
    g = gear_compress(x, group=32, rank=3, outlier=0.02, axis=-1)
    n = x.numel()
    k = round(0.02*128*32)
    expect = n//2 + (n//32)*2*2 + 2*2*(128 + 32)*3*2 + 2*2*k*(2 + 2)
    assert g.nbytes() == expect
    assert g.s_idx.dtype == torch.int16 and g.s_val.dtype == torch.float16 and g.a.dtype == torch.float16


def test_each_component_lowers_error_on_twin_kv():
    "On real K/V from a tiny random-weight Qwen3's prefill: outliers and low rank each lower the error."
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    m = Qwen3ForCausalLM(cfg).eval()
    c = DynamicCache()
    with torch.no_grad(): m(torch.randint(0, 256, (1, 128)), past_key_values=c)
    for x, axis in ((c.layers[0].keys, -2), (c.layers[0].values, -1)):
        e_plain = rel_error(x, quantize_uniform(x, 4, 64, axis).dequantize())
        e_s = rel_error(x, gear_compress(x, group=64, axis=axis, rank=0, outlier=0.01).dequantize())
        e_sl = rel_error(x, gear_compress(x, group=64, axis=axis, rank=2, outlier=0.01).dequantize())
        assert e_sl < e_s < e_plain


def test_cache_in_generate_and_refusals():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    m = Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, 40))
    cache = GEARCache(m.config, residual_length=8)
    out = m.generate(ids, past_key_values=cache, max_new_tokens=10, do_sample=False)
    assert out.shape[1] == 50
    assert cache.get_seq_length() == 49        # the last generated token is never fed back
    dense = DynamicCache()
    with torch.no_grad(): m(ids, past_key_values=dense)
    dense_bytes = sum(l.keys.nbytes + l.values.nbytes for l in dense.layers)
    assert cache.kv_nbytes() < dense_bytes*49/40
    with pytest.raises(QuantError, match="beam search"):
        m.generate(ids, past_key_values=GEARCache(m.config), max_new_tokens=3, num_beams=2, do_sample=False)
    with pytest.raises(QuantError, match="allowed 2, 4, 8"):
        GEARCache(m.config, bits=3)
