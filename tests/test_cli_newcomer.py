"""The CLI as a new user meets it (issue 8): what `eval` and `calibrate` print fits an 80-column
terminal with no figure cut from its name, a run folder is never overwritten by accident, and a
data set with one class says that its MCC means nothing. Each test runs the real `stage1-cascade`
script in a subprocess with COLUMNS=80, as a terminal of that width would."""
import json, os, re, subprocess, sys
from pathlib import Path

import yaml

SCRIPT = Path(sys.executable).with_name("stage1-cascade")


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "LINES": "50"}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def _too_wide(text: str, tmp: Path) -> list[str]:
    "Lines over 80 columns, a path under pytest's temporary folder (its length is the run counter's) counted as `<tmp>`."
    return [l for l in text.replace(str(tmp), "<tmp>").splitlines() if len(l) > 80]


def test_eval_fits_80_columns_and_never_overwrites_a_run(tmp_path):
    run = tmp_path/"run"
    r = cli("eval", "--data", "synthetic:16:7001", "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _too_wide(r.stdout, tmp_path) == [] and "…" not in r.stdout, r.stdout
    m = json.loads((run/"metrics.json").read_text())
    ro = m["cascade"]["router_overhead_ms"]
    overhead = [l for l in r.stdout.splitlines() if l.startswith("router overhead")]
    assert len(overhead) == 1 and overhead[0].endswith(f"p50 {ro['p50']:.2f} ms, p99 {ro['p99']:.2f} ms"), r.stdout
    for name in ("cascade", "stage1_only", "top_tier_only"):   # each row names its predictor whole
        assert re.search(rf"│ {name} +│ {m[name]['natix_reward']:.3f} ", r.stdout), (name, r.stdout)
    gpu = m["gpu_cost_estimate"]["tiers"]
    for tier, d in gpu.items():                                 # each tier's GPU-cost row on one line
        assert any(l.split()[:1] == [tier] and f"{d['low_ms']:.3g}" in l for l in r.stdout.splitlines()), (tier, r.stdout)

    before = {p.name: p.read_bytes() for p in run.iterdir()}
    again = cli("eval", "--data", "synthetic:16:7001", "--out", run, "--no-progress")
    assert again.returncode == 1
    said = " ".join(again.stderr.split())
    assert "is not empty" in said and "--force" in said and "--resume" in said, again.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before   # refused before anything was written

    forced = cli("eval", "--data", "synthetic:10:7001", "--out", run, "--no-frontier", "--force", "--no-progress")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads((run/"metrics.json").read_text())["n_images"] == 10
    assert not (run/"frontier.json").exists()                   # the earlier run's frontier is not left beside it


def test_one_class_data_set_warns_that_mcc_means_nothing(tmp_path):
    from stage1_cascade.scenes import synthetic_samples
    pos = [s for s in synthetic_samples(10, seed=7001) if s.label == 1][:4]
    (tmp_path/"data"/"roadwork").mkdir(parents=True)
    for i, s in enumerate(pos): (tmp_path/"data"/"roadwork"/f"{i}.jpg").write_bytes(s.image)
    r = cli("eval", "--data", tmp_path/"data", "--out", tmp_path/"run", "--levels", "none", "--no-frontier", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    said = " ".join(r.stdout.split())
    assert "warning: the labels hold one class only (4 images, all roadwork)" in said, r.stdout
    assert _too_wide(r.stdout, tmp_path) == []
    m = json.loads((tmp_path/"run"/"metrics.json").read_text())
    assert (m["label_check"]["one_class"], m["label_check"]["n_roadwork"], m["label_check"]["n_no_roadwork"]) == (True, 4, 0)
    assert m["mcc"] == 0.0 and m["natix_reward"] <= 0.125       # what the warning says


def test_calibrate_prints_the_routing_in_words(tmp_path):
    out = tmp_path/"cascade.yaml"
    r = cli("calibrate", "--data", "synthetic:40:7002", "--budget", "0.5", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _too_wide(r.stdout, tmp_path) == []
    assert re.search(r"\(0\.\d+, 0\.\d+\)|\{'", r.stdout) is None, r.stdout   # no Python tuple or dict
    cfg = yaml.safe_load(out.read_text())
    assert f"routing: {' -> '.join(cfg['tiers'])}" in r.stdout
    for tier, (lo, hi) in cfg["thresholds"].items():
        assert f"{tier} " in r.stdout and f"<= {lo:.3f} or >= {hi:.3f}" in r.stdout, r.stdout
    c = cfg["meta"]["calibration"]
    assert f"on {c['n_images']} calibration images (in-sample): reward {c['reward']:.3f}" in r.stdout
