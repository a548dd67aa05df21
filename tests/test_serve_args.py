"Rendering `vllm serve` arguments and LMCache files; validation against the schema (and vLLM when present)."
import json, shlex, sys
import pytest
import yaml
from stage1_cascade.serve import args as P
from stage1_cascade.plan.placement import make_plan
from stage1_cascade.plan.facts import PlanError


def full_config(**kw):
    base = dict(checkpoint="Qwen/Qwen3-VL-8B-Instruct-FP8", port=8005, kv_cache_dtype="fp8_e4m3", prefix_caching=False,
                sleep_mode=True, speculative={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 5},
                mm_encoder_tp_mode="data", max_model_len=4096, max_num_seqs=8, limit_mm_per_prompt={"image": 1},
                gpu_memory_utilization=0.25, trust_remote_code=True,
                lmcache=P.LMCacheSettings(chunk_size=256, max_local_cpu_size=8, local_disk="file:///tmp/lmc",
                                          max_local_disk_size=50))
    base.update(kw)
    return P.StackConfig(**base)


def test_rendered_command_round_trips_and_validates():
    argv = P.serve_args(full_config())
    line = shlex.join(argv)
    assert shlex.split(line) == argv
    v = P.validate_serve_args(line)
    assert v["model"] == "Qwen/Qwen3-VL-8B-Instruct-FP8"
    assert v["--kv-cache-dtype"] == "fp8_e4m3" and v["--port"] == 8005
    assert v["--speculative-config"]["method"] == "ngram"
    assert v["--kv-transfer-config"] == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    assert v["--no-enable-prefix-caching"] and v["--enable-sleep-mode"] and v["--trust-remote-code"]
    assert v["--gpu-memory-utilization"] == pytest.approx(0.25)


def test_kv_cache_memory_bytes_replaces_utilization():
    v = P.validate_serve_args(P.serve_args(full_config(kv_cache_memory_bytes=123456789)))
    assert v["--kv-cache-memory-bytes"] == 123456789 and "--gpu-memory-utilization" not in v


def test_lmcache_yaml_and_env():
    sc = full_config()
    d = yaml.safe_load(P.lmcache_yaml(sc.lmcache))
    assert d == {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 8, "local_disk": "file:///tmp/lmc",
                 "max_local_disk_size": 50}
    env = P.serve_env(sc, "/x/l.yaml")
    assert env["LMCACHE_CONFIG_FILE"] == "/x/l.yaml" and env["VLLM_SERVER_DEV_MODE"] == "1"


@pytest.mark.parametrize("extra,match", [
    (["--kv-cache-dtype", "fp9"], "'fp9'"),
    (["--mm-encoder-tp-mode", "tensor"], "'tensor'"),
    (["--gpu-memory-utilization", "0"], "> 0.0"),
    (["--gpu-memory-utilization", "1.2"], "above"),
    (["--max-model-len", "abc"], "'abc'"),
    (["--limit-mm-per-prompt", "image=1"], "not a valid json"),
    (["--speculative-config", '{"num_speculative_tokens":4}'], "lacks key 'method'"),
    (["--speculative-config", '{"method":"magic"}'], "'magic'"),
    (["--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1","kv_role":"both"}'], "'both'"),
    (["--port", "70000"], "above"),
    (["--enable-turbo"], "'--enable-turbo'"),
    (["--max-num-seqs"], "needs a value"),
])
def test_schema_rejects(extra, match):
    with pytest.raises(P.InvalidServeArgs, match=match):
        P.validate_serve_args(["vllm", "serve", "m"] + extra)


def test_every_command_of_the_default_plan_validates(tmp_path):
    p = P.plan("2xH100-80GB", "default26", out=tmp_path, lmcache=True)
    lines = [l for l in (tmp_path / "serve.sh").read_text().splitlines() if " nohup vllm serve " in l]
    assert len(lines) == len(p.by_status("sleeping")) + sum(
        1 for x in p.placements if x.status == "resident" and x.tier in ("fast", "power", "precision"))
    for l in lines:
        cmd = l.split(" nohup ", 1)[1].split(" > logs/")[0]
        P.validate_serve_args(cmd)
    assert len(list((tmp_path / "lmcache").glob("*.yaml"))) == len(lines)
    cfgs = P.stack_configs(p, kv_budget="bytes")
    for sc in cfgs.values():
        assert sc.kv_cache_memory_bytes and sc.gpu_memory_utilization is None


def test_real_vllm_parser_when_available():
    py = P.vllm_python()
    if not py:
        pytest.skip("no vLLM environment (set S1C_VLLM_PYTHON); schema checks above still ran")
    plan = make_plan("2xH100-80GB", "default26")
    argvs = [P.serve_args(sc) for sc in P.stack_configs(plan, lmcache=True).values()]
    argvs += [P.serve_args(sc) for sc in P.stack_configs(plan, kv_budget="bytes").values()]
    good = P.serve_args(full_config())
    res = P.validate_with_vllm(argvs + [good, ["vllm", "serve", "m", "--kv-cache-dtype", "fp9"],
                                        ["vllm", "serve", "m", "--mm-encoder-tp-mode", "pipe"]], py)
    assert all(r["ok"] for r in res[:-2]), [r for r in res if not r["ok"]]
    assert res[-3]["kv_cache_dtype"] == "fp8_e4m3" and res[-3]["enable_sleep_mode"] is True
    assert res[-2] == {**res[-2], "ok": False, "stage": "CacheConfig"}
    assert res[-1]["ok"] is False and res[-1]["stage"] == "argparse"


def test_vllm_parser_failure_comes_back_typed():
    "The parser script run by an interpreter without vLLM: a real subprocess whose stderr tail is in the error."
    with pytest.raises(PlanError, match="(?s)vLLM parser run failed.*stderr tail.*No module named 'vllm'"):
        P.validate_with_vllm([P.serve_args(full_config())], sys.executable, timeout_s=120)
