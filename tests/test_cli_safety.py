"""What the CLI must never do: show a server URL's credentials (`info`, a run's config.json, an
error line) or overwrite checkpoints it was not told to (`train`). Real `stage1-cascade` processes;
the train refusals are checked without training (they happen before any work starts)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
from PIL import Image

from stage1_cascade.cli import OutputNotEmpty, train_target
from stage1_cascade.core import assets_dir, new_run_dir

URL = "http://user:pass@127.0.0.1:9/x?api_key=abc"   # port 9 on the loopback: nothing answers
EXE = Path(sys.executable).with_name("stage1-cascade")


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def shown(text: str) -> tuple:
    "(password shown, api key shown, host shown)"
    return "pass" in text, "abc" in text, "127.0.0.1:9" in text


def test_info_masks_url_credentials():
    r = run_cli("info", "--json", env={"S1C_FAST_URL": URL})
    assert r.returncode == 0, r.stderr[-2000:]
    assert shown(r.stdout) == (False, False, True)
    d = json.loads(r.stdout)
    assert d["settings"]["fast_url"] == "http://***@127.0.0.1:9/x?api_key=***"
    assert d["backends"]["vlm:fast"].startswith("unreachable")  # probed with the real URL all the same


def test_run_config_masks_url_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("S1C_FAST_URL", URL)
    run = new_run_dir("eval", {"data": "synthetic:4"}, root=tmp_path)
    assert shown((run/"config.json").read_text()) == (False, False, True)


def test_error_line_masks_url_credentials(tmp_path):
    "Servers configured but unreachable: the one-line error names the server, not its credentials."
    img = tmp_path/"x.jpg"; Image.new("RGB", (224, 224), (90, 90, 90)).save(img)  # valid: predict opens the stack at the first valid image
    r = run_cli("predict", img, env={f"S1C_{t}_URL": URL for t in ("FAST", "POWER", "PRECISION")})
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "error:" in r.stderr and shown(r.stderr) == (False, False, True)


def test_train_refuses_a_non_empty_out_before_training(tmp_path):
    out = tmp_path/"out"; out.mkdir(); (out/"keep.txt").write_text("mine")
    r = run_cli("train", "--out", out)
    assert r.returncode == 1
    msg = " ".join(r.stderr.split())
    assert f"--out {out} is not empty (1 entries)" in msg and "--force" in msg
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # no stage1/ or standin/: training never started
    assert "generated" not in r.stdout                      # build_checkpoints' first log line


def test_train_refuses_the_shipped_assets_without_force():
    before = {p: p.stat().st_mtime_ns for p in assets_dir().rglob("*")}
    r = run_cli("train", "--out", assets_dir())
    assert r.returncode == 1 and "--force" in " ".join(r.stderr.split())
    assert {p: p.stat().st_mtime_ns for p in assets_dir().rglob("*")} == before


def test_train_destinations(tmp_path, monkeypatch):
    monkeypatch.setenv("S1C_RUNS_DIR", str(tmp_path/"runs"))
    t = train_target(None, config={"seed": 3})                 # the default: a new run folder
    assert t.parent == tmp_path/"runs" and "-train-" in t.name
    assert json.loads((t/"config.json").read_text())["config"] == {"seed": 3}
    assert train_target(None, force=True) == assets_dir()      # only --force means the shipped assets
    with pytest.raises(OutputNotEmpty, match="add --force"): train_target(t)
    assert train_target(t, force=True) == t                    # --force: a non-empty folder is accepted
    assert train_target(tmp_path/"new") == tmp_path/"new"      # a new folder is fine
    (tmp_path/"f").write_text("x")
    with pytest.raises(OutputNotEmpty, match="is a file"): train_target(tmp_path/"f", force=True)
