"""Weight quantization requests (stage1_cascade.compression.quant.quantize): bad input is refused
before any process starts, a failing worker process hands back its stderr, and (opt-in, needs the
quantize environment) a real llm-compressor FP8 run writes a compressed-tensors checkpoint."""
import json, os, sys
from pathlib import Path

import pytest

from stage1_cascade.compression.quant import (QuantEnv, QuantError, SCHEMES, default_env_dir, quantize,
                                              safetensors_bytes, save_twin)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return save_twin(tmp_path_factory.mktemp("q")/"twin")


def test_unknown_scheme_names_the_allowed_ones(twin):
    with pytest.raises(QuantError) as e: quantize(twin, "INT3")
    assert "'INT3'" in str(e.value) and all(s in str(e.value) for s in SCHEMES)


def test_missing_model_dir(tmp_path):
    with pytest.raises(QuantError, match="has no config.json"): quantize(tmp_path/"absent", "W4A16")


def test_bad_calibration_spec_and_method(twin):
    with pytest.raises(QuantError, match="synthetic:N"): quantize(twin, "W4A16", calibration="c4:16")
    with pytest.raises(QuantError, match="allowed \\['awq', 'rtn'\\]"): quantize(twin, "W4A16", method="gptq")


def test_missing_environment(twin, tmp_path):
    with pytest.raises(QuantError, match="ensure_quantize_env"): quantize(twin, "FP8_DYNAMIC", env=tmp_path/"none")


def test_worker_failure_carries_stderr_tail(twin, tmp_path):
    "A real subprocess that fails: this interpreter has no llm-compressor, so the worker's import fails."
    fake = QuantEnv(tmp_path, Path(sys.executable), False, 0.0, {})
    with pytest.raises(QuantError) as e:
        quantize(twin, "FP8_DYNAMIC", out=tmp_path/"out", env=fake, timeout_s=120)
    msg = str(e.value)
    assert "exit 1" in msg and "stderr tail" in msg and "ModuleNotFoundError" in msg and "llmcompressor" in msg


def test_twin_sizes_from_safetensors_headers(twin):
    b = safetensors_bytes(twin)
    assert b["tensor_bytes"] == b["linear_bytes"] + b["other_bytes"]
    assert b["file_bytes"] > b["tensor_bytes"]          # plus the header
    assert set(b["dtypes"]) == {"BF16"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("S1C_RUN_QUANT_ENV") != "1" or not (default_env_dir()/"bin"/"python").exists(),
                    reason="opt-in (S1C_RUN_QUANT_ENV=1) and needs ensure_quantize_env() first")
def test_real_fp8_checkpoint(twin, tmp_path):
    r = quantize(twin, "FP8_DYNAMIC", out=tmp_path/"fp8")
    cfg = json.loads((tmp_path/"fp8"/"config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors"
    assert r["linear_bytes_ratio"] < 0.6              # 8-bit weights + per-channel scales vs bf16
    assert r["load_back"]["n_positions"] == 64 and r["load_back"]["model_class"] == "Qwen3ForCausalLM"
