"""`stage1-cascade quantize --twin` end to end: creates (or reuses) the llm-compressor environment,
quantizes a tiny Qwen3 twin to FP8 in it as a real subprocess, and writes a compressed-tensors
checkpoint whose sizes were measured. Opt-in (S1C_RUN_QUANT_ENV=1; .ci/run sets it) because the
first run installs llm-compressor into its own venv (minutes)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("S1C_RUN_QUANT_ENV") != "1", reason="opt-in: S1C_RUN_QUANT_ENV=1")


def test_quantize_twin_fp8(tmp_path):
    exe = Path(sys.executable).with_name("stage1-cascade")
    out = tmp_path/"fp8"
    r = subprocess.run([str(exe), "quantize", "--twin", "--scheme", "FP8_DYNAMIC", "--out", str(out)],
                       capture_output=True, text=True, timeout=3000, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = json.loads((out/"config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors"
    src = sum(f.stat().st_size for f in (tmp_path/"fp8-source-twin").glob("*.safetensors"))
    dst = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert 0 < dst < src  # FP8 weights take fewer bytes than the bf16 twin's
