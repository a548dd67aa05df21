"Stand-in tiers answering from the shipped classifier (`detect.standin_scorer`), over HTTP."
import numpy as np
import pytest

from stage1_cascade.core import assets_dir
from stage1_cascade.data import load_image
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.engines import ServerManager, get_scorer, VLMRequestError

CKPTS = [assets_dir() / "standin" / f"{t}.pt" for t in ("fast", "power", "precision")]


def test_stand_in_checkpoints_are_shipped():
    assert all(p.exists() for p in CKPTS), [str(p) for p in CKPTS if not p.exists()]


def test_tiers_serve_the_classifier_p():
    samples = synthetic_samples(6, seed=7)
    with ServerManager(("fast", "precision")) as mgr:
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
