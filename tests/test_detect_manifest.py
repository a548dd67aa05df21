"Manifests come from code: a tiny `bench.build_checkpoints` run writes both in one schema, `check_manifest` recomputes them from the weights and catches a checkpoint or a figure changed behind the manifest's back; the shipped manifests pass the same check."
import json, os, shutil
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest

from stage1_cascade.core import assets_dir
from stage1_cascade.bench import build_checkpoints
from stage1_cascade.detect import CheckpointError, Stage1, checkpoint_sha256, load_classifier, save_classifier
from stage1_cascade.train import CHECK_N, MANIFEST_FORMAT, STAGE1_CANDIDATES, check_manifest
from stage1_cascade.standin.backends import STANDIN_SPECS, STANDIN_TIERS

TINY = dict(n_train=48, n_cal=48, n_test=CHECK_N, n_boxes=24, cnn_epochs=1, yolo_epochs=1, hf_steps=1, n_extra=24,
            standin_specs={t: {**STANDIN_SPECS[t], "n_train": 48, "epochs": 1} for t in STANDIN_TIERS})
COMMON = {"format", "what", "description", "written_by", "seed", "seeds", "synthetic", "sizes", "generate_s", "models",
          "metrics", "check", "files", "total_bytes", "total_s", "torch_threads"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "Every shipped asset, rebuilt at toy sizes (about a minute): (assets folder, Stage-1 manifest)."
    out = tmp_path_factory.mktemp("assets")
    return out, build_checkpoints(out, seed=3, log=lambda s: None, **TINY)


def _copy(src, dst):
    shutil.copytree(src, dst); return dst


def test_both_manifests_are_written_by_code_in_one_schema(tiny):
    out, man = tiny
    sman = json.loads((out/"standin"/"manifest.json").read_text())
    assert json.loads((out/"stage1"/"manifest.json").read_text()) == man  # what was returned is what was written
    assert COMMON <= set(man) and COMMON <= set(sman) and man["format"] == sman["format"] == MANIFEST_FORMAT
    assert (man["written_by"], sman["written_by"]) == ("stage1_cascade.train.build_stage1", "stage1_cascade.standin.backends.build_standins")
    for d, m in ((out/"stage1", man), (out/"standin", sman)):
        assert m["seeds"]["test"] == 3003 and m["check"]["seed"] == m["seeds"]["test"] and m["check"]["n"] == CHECK_N
        for rel, f in m["files"].items(): assert f["sha256"] == checkpoint_sha256(d/rel) and f["bytes"] > 0, rel
        assert sorted(p.name for p in d.iterdir()) == sorted({*m["files"], "manifest.json"})  # nothing else shipped
    assert not any(p.name.endswith((".new", ".old")) for p in out.iterdir())


def test_every_candidate_is_measured_and_only_kept_ones_ship(tiny):
    out, man = tiny
    assert list(man["models"]) == list(STAGE1_CANDIDATES)
    kept = [c for c, m in man["models"].items() if m["kept"]]
    assert kept and kept == sorted(man["members"], key=list(STAGE1_CANDIDATES).index) and man["members"][0] in kept
    for c, m in man["models"].items():
        assert {"auc", "mcc", "accuracy"} <= set(m["test"]) and m["test"]["n"] == CHECK_N and m["ms_per_image"] > 0, c
        assert m["reason"].startswith("kept" if m["kept"] else "left out"), (c, m["reason"])
        assert (out/"stage1"/m["file"]).exists() == m["kept"], c
    assert Stage1.load(out/"stage1").names == man["members"]
    assert set(man["metrics"]["test"]) == {*STAGE1_CANDIDATES, "stage1_fused", "all_candidates_fused"}


def test_check_manifest_recomputes_a_subset_of_the_held_out_metrics(tiny):
    out, man = tiny
    got = check_manifest(out/"stage1")
    assert set(got) == set(man["check"]["metrics"]) == {*man["members"], "stage1_fused"}
    for k, v in man["check"]["metrics"].items():  # n_test == CHECK_N here, so the check block is the whole test row
        assert v == man["metrics"]["test"][k], k
    assert set(check_manifest(out/"standin")) == {f"standin_{t}" for t in STANDIN_TIERS}


def test_a_checkpoint_changed_without_its_manifest_fails(tiny, tmp_path):
    out, _ = tiny
    d = _copy(out/"standin", tmp_path/"standin")
    clf = load_classifier(d/"fast.pt")
    for p in clf.net.parameters(): p.data.mul_(1.01)
    save_classifier(clf, d/"fast.pt", half=True)
    with pytest.raises(CheckpointError, match="fast.pt"): check_manifest(d)
    s1 = _copy(out/"stage1", tmp_path/"stage1")  # the fusion refitted and re-saved: stage1.json changes, the manifest does not
    st = Stage1.load(s1); st.stacker.intercept += 1.0; st.save(s1)
    with pytest.raises(CheckpointError, match="stage1.json"): check_manifest(s1)


def test_a_hand_edited_figure_fails(tiny, tmp_path):
    out, man = tiny
    for folder, key in (("stage1", "stage1_fused"), ("standin", "standin_power")):
        d = _copy(out/folder, tmp_path/folder); f = d/"manifest.json"; m = json.loads(f.read_text())
        m["check"]["metrics"][key]["accuracy"] = round(m["check"]["metrics"][key]["accuracy"] + 1 / CHECK_N, 4)  # one image flipped
        f.write_text(json.dumps(m))
        with pytest.raises(CheckpointError, match=f"{key}.accuracy"): check_manifest(d)


def test_other_check_images_or_an_old_manifest_are_named_as_such(tiny, tmp_path):
    out, _ = tiny
    d = _copy(out/"standin", tmp_path/"standin"); f = d/"manifest.json"; m = json.loads(f.read_text())
    m["check"]["seed"] += 1; f.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="scene generator changed"): check_manifest(d)
    m = {k: v for k, v in m.items() if k != "check"}; m["format"] = "stage1_cascade.standin/2"; f.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="not written by this version"): check_manifest(d)  # e.g. the manifests before issue 7


@pytest.mark.parametrize("folder", ["stage1", "standin"])
def test_shipped_manifest_matches_its_weights(folder):
    "Fails until the shipped assets are rebuilt by `stage1-cascade train` (then whenever a checkpoint changes without its manifest)."
    got = check_manifest(assets_dir()/folder)
    man = json.loads((assets_dir()/folder/"manifest.json").read_text())
    assert man["check"]["seed"] == man["seeds"]["test"] and man["check"]["n"] == min(CHECK_N, man["sizes"]["test"])
    assert set(got) == set(man["check"]["metrics"])
