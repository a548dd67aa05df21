"Stand-in tiers answering from the shipped classifier (`standin.backends.standin_scorer`): the checkpoints as shipped, and over HTTP."
import json, os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pytest

from stage1_cascade.core import assets_dir
from stage1_cascade.data import load_image
from stage1_cascade.detect import DetectError, save_classifier
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.scoring import binary_metrics
from stage1_cascade.standin.backends import STANDIN_TIERS, get_scorer, standin_scorer
from stage1_cascade.standin.server import StandinFleet
from stage1_cascade.vlm import VLMRequestError

CKPTS = [assets_dir() / "standin" / f"{t}.pt" for t in ("fast", "power", "precision")]
EVAL_SEED = 9001  # not one of build_checkpoints' seeds (seed*1000 + 1..5)


@pytest.fixture(scope="module")
def held_out():
    s = synthetic_samples(48, seed=EVAL_SEED)
    return [x.pil() for x in s], np.array([x.label for x in s])


def test_stand_in_checkpoints_are_shipped():
    assert all(p.exists() for p in CKPTS), [str(p) for p in CKPTS if not p.exists()]
    sman = json.loads((assets_dir()/"standin"/"manifest.json").read_text())
    assert sman["synthetic"] is True and set(sman["models"]) == set(STANDIN_TIERS)


def test_standin_tiers_look_at_the_image(held_out):
    imgs, y = held_out
    fast, prec = standin_scorer("fast"), standin_scorer("precision")
    pf = np.array([fast(im) for im in imgs]); pp = np.array([prec(im) for im in imgs])
    assert ((pf >= 0) & (pf <= 1)).all() and not np.allclose(pf, pp)  # two different models
    assert binary_metrics(y, pf)["accuracy"] >= 0.6 and binary_metrics(y, pp)["accuracy"] >= 0.6
    assert pf.std() > 0.05  # it answers differently for different images


def test_standin_tiers_are_their_own_checkpoints(tmp_path):
    man = json.loads((assets_dir()/"standin"/"manifest.json").read_text())
    assert list(man["models"]) == ["fast", "power", "precision"]
    clfs = {t: standin_scorer(t).classifier for t in man["models"]}
    for t, c in clfs.items():
        assert c.widths == man["models"][t]["widths"] and c.size == man["models"][t]["input"], t
        assert c.n_params == man["models"][t]["params"], t
    assert clfs["fast"].n_params < clfs["power"].n_params < clfs["precision"].n_params
    assert set(man["metrics"]["test"]) >= {"standin_fast", "standin_power", "standin_precision"}
    # the path override loads whatever checkpoint it is given
    p = save_classifier(clfs["fast"], tmp_path/"f.pt")
    assert standin_scorer("precision", path=p).classifier.widths == clfs["fast"].widths


def test_unknown_tier_is_refused_by_name():
    with pytest.raises(DetectError, match="allowed"): standin_scorer("ultra")


def test_tiers_serve_the_classifier_p():
    samples = synthetic_samples(6, seed=7)
    with StandinFleet(("fast", "precision")) as mgr:
        cl = mgr.clients()
        for tier, c in cl.items():
            direct = get_scorer(f"detect:{tier}")
            got = [c.p_roadwork(s.image).p for s in samples]
            want = [direct(load_image(s.image)) for s in samples]   # the label is never sent, never read
            assert got == pytest.approx(want, abs=1e-6), tier
        assert cl["fast"].models() == ["standin-fast"]
        with pytest.raises(VLMRequestError, match="HTTP 404"):      # a tier's client pointed at another tier's server
            type(cl["fast"])(mgr.urls["precision"], "standin-fast").p_roadwork(samples[0].image)


def test_unknown_scorer_spec():
    with pytest.raises(ValueError, match="allowed 'orange'"):
        get_scorer("labels")
