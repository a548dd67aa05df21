"Stage 1 (stage1_cascade.detect): the shipped checkpoints, every adapter (tiny ones for the candidates the shipped stack leaves out), fusion, member selection and checksums."
import json, os, shutil
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pytest
import torch
from PIL import Image

from stage1_cascade.core import assets_dir
from stage1_cascade.data import InvalidImage, to_jpeg
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.scoring import binary_metrics, round_predictions
from stage1_cascade.train import MANIFEST_FORMAT, select_members
from stage1_cascade.detect import (STAGE1_FORMAT, CheckpointError, ClassifierDetector, Detection,
                                   DetectError, DetectorResult, HFDetector, LogitStacker, Stage1, YoloDetector,
                                   build_hf_detector, checkpoint_sha256, default_stage1, load_classifier, save_classifier,
                                   train_classifier, ultralytics_yolo, write_yolo_yaml)

EVAL_SEED = 9001  # not one of build_checkpoints' seeds (seed*1000 + 1..5)


@pytest.fixture(scope="module")
def stage1(): return default_stage1()


@pytest.fixture(scope="module")
def held_out():
    s = synthetic_samples(48, seed=EVAL_SEED)
    return [x.pil() for x in s], np.array([x.label for x in s])


@pytest.fixture(scope="module")
def tiny_yolo(tmp_path_factory):
    "A random-weight YOLO in ultralytics' own .pt format (built from the yaml, nothing downloaded)."
    d = tmp_path_factory.mktemp("yolo")
    ultralytics_yolo()(str(write_yolo_yaml(d/"roadwork-yolo11t.yaml"))).save(d/"yolo.pt")
    return d/"yolo.pt"


class _Marker:
    "Unpickling this object opens (so creates) `path`: a stand-in for any code a pickle can run."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (open, (self.path, "w"))


def test_shipped_assets_are_small_and_described():
    d = assets_dir()/"stage1"
    man = json.loads((d/"manifest.json").read_text())
    total = sum(f.stat().st_size for s in ("stage1", "standin") for f in (assets_dir()/s).rglob("*") if f.is_file())
    assert total < 8 * 2**20, f"shipped Stage-1 + stand-in assets are {total} bytes, over 8 MiB"
    assert man["format"] == MANIFEST_FORMAT and man["written_by"] == "stage1_cascade.train.build_stage1"
    assert man["seed"] == 0 and man["synthetic"] is True and "stage1_fused" in man["metrics"]["test"]
    assert man["members"] == [c for c, m in man["models"].items() if m["kept"]]
    for c, m in man["models"].items():  # every candidate measured; only the kept ones shipped
        assert {"auc", "mcc", "accuracy"} <= set(m["test"]) and m["ms_per_image"] > 0 and m["reason"], c
        assert (d/m["file"]).exists() == m["kept"], c
    sman = json.loads((assets_dir()/"standin"/"manifest.json").read_text())  # its tiers: tests/test_standin_tiers.py
    assert sman["format"] == MANIFEST_FORMAT


def test_fused_stage1_beats_chance(stage1, held_out):
    imgs, y = held_out
    m = binary_metrics(y, stage1.predict_many(imgs))
    assert m["accuracy"] >= 0.6 and m["mcc"] >= 0.2, m


def test_predict_detail_reports_every_member(stage1, held_out):
    d = stage1.predict_detail(held_out[0][0])
    assert 0.0 <= d["p"] <= 1.0 and set(d["members"]) == set(stage1.names)
    assert all(v["latency_ms"] > 0 for v in d["members"].values())
    r = stage1.detectors[0].predict(to_jpeg(held_out[0][1]))  # bytes go through load_image
    assert isinstance(r, DetectorResult) and 0.0 <= r.p <= 1.0


def test_save_load_roundtrip(stage1, held_out, tmp_path):
    re = Stage1.load(stage1.save(tmp_path/"s1"))
    assert re.names == stage1.names
    np.testing.assert_allclose(re.predict_many(held_out[0][:4]), stage1.predict_many(held_out[0][:4]), atol=1e-6)


def test_one_member_stage1_saves_loads_and_checks_its_checkpoint(held_out, tmp_path):
    imgs, y = held_out
    clf = train_classifier(synthetic_samples(16, seed=5), widths=(4, 8), size=32, epochs=1, batch=8, seed=0)
    st = Stage1([ClassifierDetector(save_classifier(clf, tmp_path/"cnn.pt"), name="cnn")]).calibrate(imgs[:24], y[:24])
    saved = st.save(tmp_path/"s1")
    re = Stage1.load(saved)
    assert re.names == ["cnn"] and len(re.stacker.coef) == 1
    np.testing.assert_allclose(re.predict_many(imgs[24:]), st.predict_many(imgs[24:]), atol=1e-9)
    assert 0.0 <= re.predict(imgs[0]) <= 1.0
    cfg = json.loads((saved/"stage1.json").read_text())
    assert cfg["format"] == STAGE1_FORMAT and cfg["members"][0]["sha256"] == checkpoint_sha256(saved/"cnn.pt")
    (saved/"stage1.json").write_text(json.dumps({**cfg, "format": "stage1_cascade.stage1/1"}))  # an older file: no digests to trust
    with pytest.raises(CheckpointError, match="trust=True"): Stage1.load(saved)
    assert Stage1.load(saved, trust=True).names == ["cnn"]


def test_yolo_adapter_loads_only_a_known_checkpoint(tiny_yolo, held_out):
    sha = checkpoint_sha256(tiny_yolo)
    det = YoloDetector(tiny_yolo, name="yolo", sha256=sha)
    r = det.predict(held_out[0][0])
    assert 0.0 <= r.p <= 1.0 and all(isinstance(b, Detection) for b in r.boxes) and det.n_params > 0
    with pytest.raises(CheckpointError, match="trust=True"): YoloDetector(tiny_yolo)
    assert YoloDetector(tiny_yolo, trust=True).n_params == det.n_params  # the escape hatch for a user's own file


def test_tampered_checkpoint_is_refused_before_unpickling(tiny_yolo, tmp_path):
    marker, evil = tmp_path/"marker", tmp_path/"evil.pt"
    torch.save({"model": _Marker(marker)}, evil)
    torch.load(evil, weights_only=False)["model"].close()  # control: plain unpickling does run the payload
    assert marker.exists(); marker.unlink()
    good = checkpoint_sha256(tiny_yolo)
    d = tmp_path/"s1"; d.mkdir(); shutil.copyfile(evil, d/"yolo.pt")  # stage1.json records the real checkpoint's digest
    (d/"stage1.json").write_text(json.dumps({"format": STAGE1_FORMAT, "stacker": None, "meta": {},
                                             "members": [{"name": "yolo", "kind": "yolo", "path": "yolo.pt", "sha256": good}]}))
    with pytest.raises(CheckpointError) as e: Stage1.load(d)
    assert "yolo.pt" in str(e.value) and good in str(e.value) and checkpoint_sha256(evil) in str(e.value)
    with pytest.raises(CheckpointError, match="not the file this project wrote"): YoloDetector(evil, sha256=good)
    with pytest.raises(CheckpointError, match="no sha256"): YoloDetector(evil)
    with pytest.raises(CheckpointError, match="weights_only=True"): load_classifier(evil)
    assert not marker.exists()


def test_hf_adapter_builds_loads_and_checks_its_folder(held_out, tmp_path):
    build_hf_detector(tmp_path/"rt", steps=0)
    sha = checkpoint_sha256(tmp_path/"rt")
    det = HFDetector(tmp_path/"rt", name="rtdetr", sha256=sha)
    r = det.predict(held_out[0][0])
    assert 0.0 <= r.p <= 1.0 and all(isinstance(b, Detection) for b in r.boxes) and det.n_params > 0
    with (tmp_path/"rt"/"config.json").open("a") as f: f.write("\n")  # any change to any file of the folder
    with pytest.raises(CheckpointError, match=sha): HFDetector(tmp_path/"rt", sha256=sha)


def test_bad_inputs_are_typed(stage1, tmp_path):
    with pytest.raises(InvalidImage): stage1.predict(b"definitely not an image")
    with pytest.raises(CheckpointError, match="stage1.json"): Stage1.load(tmp_path)
    (tmp_path/"x.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="x.pt"): load_classifier(tmp_path/"x.pt")
    with pytest.raises(DetectError, match="both labels"): LogitStacker.fit(["a"], np.array([[0.2], [0.3]]), np.array([1, 1]))
    with pytest.raises(DetectError, match="each label"): select_members(["a"], np.array([[0.2], [0.3], [0.4]]), np.array([1, 1, 0]))


def test_binary_metrics_round_like_the_validator():
    rng = np.random.default_rng(0)
    y, p = np.arange(200) % 2, np.round(rng.random(200), 1)  # many answers exactly 0.5
    assert (p == 0.5).sum() > 5
    m = binary_metrics(y, p)
    assert m["accuracy"] == round(float((round_predictions(p) == y).mean()), 4)
    assert binary_metrics([0, 1], [0.5, 0.9])["accuracy"] == 1.0  # 0.5 is 'no roadwork'


def test_select_members_keeps_what_helps_and_says_why():
    rng = np.random.default_rng(2); y = np.arange(400) % 2
    view = lambda: 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, 400))))
    a, b = view(), view()
    sel = select_members(["flat", "a", "b", "copy"], np.stack([np.full(400, 0.21), a, b, a], 1), y, margin=0.005)
    assert sorted(sel["kept"]) == ["a", "b"] and set(sel["reasons"]) == {"flat", "a", "b", "copy"}
    assert sel["reasons"]["flat"].startswith("left out") and sel["reasons"]["copy"].startswith("left out")
    assert sel["gain"]["copy"] <= 0.005 < sel["gain"][sel["kept"][1]]
    # a larger margin keeps only the best one
    assert len(select_members(["a", "b"], np.stack([a, b], 1), y, margin=0.5)["kept"]) == 1


def test_train_classifier_is_reproducible(tmp_path):
    s = synthetic_samples(8, seed=5)
    a = train_classifier(s, widths=(4, 8), size=32, epochs=1, batch=4, seed=3)
    b = train_classifier(s, widths=(4, 8), size=32, epochs=1, batch=4, seed=3)
    imgs = [x.pil() for x in s]
    np.testing.assert_allclose(a.predict_proba(imgs), b.predict_proba(imgs), atol=1e-6)
    np.testing.assert_allclose(load_classifier(save_classifier(a, tmp_path/"a.pt")).predict_proba(imgs), a.predict_proba(imgs), atol=1e-6)
