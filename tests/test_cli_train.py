"""`stage1-cascade train --data PARQUET --backbone twin:vit` end to end, as a real process (issue 12).

The data is a parquet file in NATIX's roadwork layout (image struct, label, scene_description,
mask_center, dataset) with two sources and rows a validator would skip; it is read through
`datasets.load_dataset("parquet", ...)`, the code path `hf:DATASET_ID` takes. The result must load
as a Hugging Face `image-classification` pipeline and as a Stage 1, and both must give the same
P(roadwork). The split rules are checked on splits built to break them."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from stage1_cascade.data import Sample, to_jpeg
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.splits import SplitError, check_splits, make_splits, write_natix_parquet

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("stage1-cascade")  # the installed script, as a user runs it


@pytest.fixture(scope="module")
def natix_parquet(tmp_path_factory):
    d = tmp_path_factory.mktemp("natix")
    ss = synthetic_samples(64, seed=501)
    path = write_natix_parquet(ss, d/"train-00000-of-00001.parquet", dataset=["city"] * 32 + ["highway"] * 32)
    import pyarrow as pa, pyarrow.parquet as pq
    t = pq.read_table(path).to_pydict()
    t["scene_description"][0] = "cones on the left"  # label 0 with a description: the validator skips it
    pq.write_table(pa.table(t), path)
    return path, ss


def test_train_on_natix_parquet_loads_as_a_pipeline_and_a_stage1(natix_parquet, tmp_path):
    path, ss = natix_parquet
    out = tmp_path/"run"
    env = {**os.environ, "COLUMNS": "80", "S1C_MODELS_DIR": str(tmp_path/"models"), "HF_DATASETS_CACHE": str(tmp_path/"hf")}
    r = subprocess.run([str(EXE), "train", "--data", str(path), "--backbone", "twin:vit",
                        "--epochs", "2", "--batch", "16", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "skipped 1 of 64 rows" in r.stdout + r.stderr
    man = json.loads((out/"manifest.json").read_text())
    assert man["n_images"] == 63 and man["backbone"]["model_type"] == "vit" and man["backbone"]["twin"]
    assert sum(man["splits"][k]["n"] for k in ("train", "val_select", "val_calib", "test")) == 63
    assert set(man["splits"]["test"]["sources"]) == {"hf:train-00000-of-00001:city", "hf:train-00000-of-00001:highway"}
    test = man["report"]["test"]
    assert test["n"] == man["splits"]["test"]["n"] and {"always_positive", "always_negative"} == set(test["baselines"])
    assert test["mcc"]["ci"][0] <= test["mcc"]["value"] <= test["mcc"]["ci"][1]
    assert set(test["by_source"]) == set(man["splits"]["test"]["sources"]) and test["by_level"]
    assert man["training"]["epochs_run"] == 2 and len(man["training"]["history"]) == 2
    assert man["model_card"]["version"] == "1.0.0" and man["model_card"]["model_name"]
    assert (out/"learning_curve.png").stat().st_size > 0 and (out/"checkpoints"/"last.pt").is_file()
    from transformers import pipeline
    from stage1_cascade.detect import Stage1, checkpoint_sha256
    assert man["files"]["model"] == checkpoint_sha256(out/"model")
    pipe = pipeline("image-classification", model=str(out/"model"), device="cpu")
    ims = [s.pil() for s in ss[:6]]
    p_pipe = np.array([next(d["score"] for d in pipe(im) if d["label"] == "Roadwork") for im in ims])
    st = Stage1.load(out)
    assert st.names == ["hf_classifier"]
    np.testing.assert_allclose(st.predict_many(ims), p_pipe, atol=1e-4)


def test_split_check_refuses_one_class_and_duplicates():
    ss = synthetic_samples(64, seed=502)
    sp = make_splits(ss, seed=0)
    assert check_splits(sp)["ok"]
    by_label = sorted(ss, key=lambda s: s.label)  # the first N of a class-sorted set
    one = {"train": by_label[:32], "val_select": by_label[32:40], "val_calib": by_label[40:52], "test": by_label[52:]}
    with pytest.raises(SplitError, match="holds one class only"): check_splits(one)
    roles = {r: list(v) for r, v in sp.roles.items()}
    x = roles["train"][0]
    roles["test"].append(Sample("reencoded", to_jpeg(x.pil(), 55), x.label, source=x.source))  # the same picture, other bytes
    with pytest.raises(SplitError, match="near-duplicates"): check_splits(roles)
    roles = {r: list(v) for r, v in sp.roles.items()}
    roles["val_calib"].append(roles["train"][1])
    with pytest.raises(SplitError, match="an image in two roles"): check_splits(roles)
