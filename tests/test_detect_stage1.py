"Stage 1 (stage1_cascade.detect): the shipped checkpoints, their loaders, fusion and stand-in scorers."
import json, os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pytest
from PIL import Image

from stage1_cascade.core import assets_dir
from stage1_cascade.data import InvalidImage, synthetic_samples, to_jpeg
from stage1_cascade.detect import (CheckpointError, DetectError, DetectorResult, LogitStacker, Stage1, binary_metrics,
                                   default_stage1, load_classifier, save_classifier, standin_scorer, train_classifier)

EVAL_SEED = 9001  # not one of build_checkpoints' seeds (seed*1000 + 1..5)


@pytest.fixture(scope="module")
def stage1(): return default_stage1()


@pytest.fixture(scope="module")
def held_out():
    s = synthetic_samples(48, seed=EVAL_SEED)
    return [x.pil() for x in s], np.array([x.label for x in s])


def test_shipped_assets_are_small_and_described():
    man = json.loads((assets_dir()/"stage1"/"manifest.json").read_text())
    total = sum(f.stat().st_size for d in ("stage1", "standin") for f in (assets_dir()/d).rglob("*") if f.is_file())
    assert total < 8 * 2**20, f"shipped Stage-1 + stand-in assets are {total} bytes, over 8 MiB"
    assert man["seed"] == 0 and man["synthetic"] is True
    assert set(man["metrics"]["test"]) >= {"stage1_fused", "cnn"}
    sman = json.loads((assets_dir()/"standin"/"manifest.json").read_text())
    assert sman["synthetic"] is True and set(sman["tiers"]) == {"fast", "power", "precision"}


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


def test_bad_inputs_are_typed(stage1, tmp_path):
    with pytest.raises(InvalidImage): stage1.predict(b"definitely not an image")
    with pytest.raises(CheckpointError, match="stage1.json"): Stage1.load(tmp_path)
    (tmp_path/"x.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="x.pt"): load_classifier(tmp_path/"x.pt")
    with pytest.raises(DetectError, match="allowed"): standin_scorer("ultra")
    with pytest.raises(DetectError, match="both labels"): LogitStacker.fit(["a"], np.array([[0.2], [0.3]]), np.array([1, 1]))


def test_standin_tiers_look_at_the_image(held_out):
    imgs, y = held_out
    fast, prec = standin_scorer("fast"), standin_scorer("precision")
    pf = np.array([fast(im) for im in imgs]); pp = np.array([prec(im) for im in imgs])
    assert ((pf >= 0) & (pf <= 1)).all() and not np.allclose(pf, pp)  # two different models
    assert binary_metrics(y, pf)["accuracy"] >= 0.6 and binary_metrics(y, pp)["accuracy"] >= 0.6
    assert pf.std() > 0.05  # it answers differently for different images


def test_standin_tiers_are_their_own_checkpoints(tmp_path):
    man = json.loads((assets_dir()/"standin"/"manifest.json").read_text())
    assert list(man["tiers"]) == ["fast", "power", "precision"]
    clfs = {t: standin_scorer(t).classifier for t in man["tiers"]}
    for t, c in clfs.items():
        assert c.widths == man["tiers"][t]["widths"] and c.size == man["tiers"][t]["input"], t
        assert c.n_params == man["tiers"][t]["params"], t
    assert clfs["fast"].n_params < clfs["power"].n_params < clfs["precision"].n_params
    assert set(man["metrics"]["test"]) >= {"standin_fast", "standin_power", "standin_precision"}
    # the path override loads whatever checkpoint it is given
    p = save_classifier(clfs["fast"], tmp_path/"f.pt")
    assert standin_scorer("precision", path=p).classifier.widths == clfs["fast"].widths


def test_train_classifier_is_reproducible(tmp_path):
    s = synthetic_samples(8, seed=5)
    a = train_classifier(s, widths=(4, 8), size=32, epochs=1, batch=4, seed=3)
    b = train_classifier(s, widths=(4, 8), size=32, epochs=1, batch=4, seed=3)
    imgs = [x.pil() for x in s]
    np.testing.assert_allclose(a.predict_proba(imgs), b.predict_proba(imgs), atol=1e-6)
    np.testing.assert_allclose(load_classifier(save_classifier(a, tmp_path/"a.pt")).predict_proba(imgs), a.predict_proba(imgs), atol=1e-6)
