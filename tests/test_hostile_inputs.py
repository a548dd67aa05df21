"""Inputs that cannot hurt the miner.

The real CLI, as a child process, answers a device, a FIFO, a folder, a 1 GB sparse file and a
missing path each with one error line naming the reason, within seconds and a small memory
budget; the data loaders count every file they are given (decided, or skipped with a reason);
an animated GIF gives its first frame; parquet rows follow the NATIX validator's rule."""
import io, json, os, signal, subprocess, sys, tempfile, threading, time, warnings
from pathlib import Path

import pytest
from PIL import Image

from stage1_cascade.data import INVALID_REASONS, MAX_BYTES, InvalidImage, load_image, to_jpeg
from stage1_cascade.datasets import DatasetWarning, load_folder, load_labels_csv, load_parquet
from stage1_cascade.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
WALL_S = 20.0  # generous: catches a hang or a read of gigabytes, does not benchmark
EXTRA_MB = 200.0  # peak RSS allowed above the same command on one valid image


def _cli(*args, timeout_s: float = 300.0) -> dict:
    "Run `stage1-cascade *args` as a child process: exit status, stdout lines, wall seconds, the child's peak RSS (MB)."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", "from stage1_cascade.cli import main; main()", *args],
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        killer = threading.Timer(timeout_s, os.killpg, (p.pid, signal.SIGKILL)); killer.start()
        try: _, status, usage = os.wait4(p.pid, 0)  # this child's own resource usage, not earlier children's
        finally: killer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0); err.seek(0)
        lines = out.read().decode().splitlines()
        stderr = err.read().decode()[-2000:]
    kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux
    return dict(rc=p.returncode, lines=lines, wall_s=wall, peak_mb=kb / 1024, stderr=stderr)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    "A valid image and one path of each hostile kind."
    d = tmp_path_factory.mktemp("hostile")
    (d / "valid.jpg").write_bytes(to_jpeg(make_scene(5, roadwork=True, size=256).image))
    os.mkfifo(d / "pipe.jpg")
    (d / "folder.jpg").mkdir()
    with open(d / "sparse.jpg", "wb") as fh: fh.truncate(2**30)  # 1 GB that takes no disk
    return d


@pytest.fixture(scope="module")
def baseline(hostile):
    "The same CLI on one valid image: the memory the hostile runs are compared with."
    r = _cli("predict", str(hostile / "valid.jpg"))
    assert r["rc"] == 0, r["stderr"]
    assert len(r["lines"]) == 1 and 0 <= json.loads(r["lines"][0])["prediction"] <= 1, r["lines"]
    return r


CASES = {"device": ("/dev/zero", "not_a_file", "character device"), "fifo": ("pipe.jpg", "not_a_file", "FIFO"),
         "directory": ("folder.jpg", "not_a_file", "directory"), "sparse_1gb": ("sparse.jpg", "absurd_size", f"{2**30} bytes"),
         "missing": ("missing.jpg", "missing_file", "no file at")}


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs POSIX FIFOs and /dev/zero")
@pytest.mark.parametrize("case", list(CASES))
def test_cli_refuses_hostile_path_quickly(case, hostile, baseline):
    name, why, says = CASES[case]
    path = name if name.startswith("/") else str(hostile / name)
    r = _cli("predict", path, timeout_s=3 * WALL_S)
    assert r["rc"] == 3, (r["rc"], r["stderr"])
    assert len(r["lines"]) == 1, r["lines"]
    line = json.loads(r["lines"][0])
    assert line["image"] == path and f"invalid image ({why})" in line["error"] and says in line["error"], line
    assert r["wall_s"] < WALL_S, f"{case}: {r['wall_s']:.1f} s"
    assert r["peak_mb"] < baseline["peak_mb"] + EXTRA_MB, f"{case}: peak {r['peak_mb']:.0f} MB vs {baseline['peak_mb']:.0f} MB on a valid image"


def test_reasons_table_documents_every_reason():
    "The notebook's table of reasons has one row per reason in `INVALID_REASONS`, no more, no less."
    cells = json.loads((ROOT / "nbs" / "01_data.ipynb").read_text())["cells"]
    md = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    rows = [l.split("|")[1].strip().strip("`") for l in md.splitlines() if l.startswith("| `")]
    assert sorted(rows) == sorted(INVALID_REASONS)


def _png(colour, size=(40, 30)):
    b = io.BytesIO(); Image.new("RGB", size, colour).save(b, "PNG"); return b.getvalue()


def _reason(data):
    try: load_image(data)
    except InvalidImage as e: return e.reason


def test_csv_missing_file_names_path_and_line(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\ngone/b.png,0\n,1\n")
    ss = load_labels_csv(tmp_path / "labels.csv")
    assert [(s.id, s.label, _reason(s.image)) for s in ss] == [("a.png", 1, None), ("gone/b.png", 0, "missing_file"),
                                                               ("labels.csv:4", 1, "missing_file")]
    with pytest.raises(InvalidImage, match=r"no file at '.*gone/b\.png' \(listed in labels\.csv line 3\)"): ss[1].pil()
    with pytest.raises(InvalidImage, match="no file name listed in labels.csv line 4"): ss[2].pil()


def test_folder_counts_every_file(tmp_path):
    "26 files under the class folders, 5 of them no usable image: 26 samples, 21 decoded, 5 skipped with a reason."
    good, bad = {}, {}
    for i in range(21):
        fmt, ext = [("JPEG", ".jpg"), ("PNG", ".PNG"), ("WEBP", ".webp"), ("BMP", ".bmp"), ("GIF", ".gif"), ("JPEG", "")][i % 6]
        b = io.BytesIO(); Image.new("RGB", (48, 32), (10 * i, 100, 0)).save(b, fmt)
        good[f"{'roadwork' if i % 2 else 'no_roadwork'}/{'deep/' if i % 5 == 0 else ''}img{i}{ext}"] = b.getvalue()
    b = io.BytesIO(); Image.new("RGB", (48, 32)).save(b, "TIFF")
    bad.update({"roadwork/scan.tif": b.getvalue(), "roadwork/notes.txt": b"roadwork on Main St",
                "roadwork/empty.jpg": b"", "no_roadwork/photo.heic": b"\x00\x00\x00\x18ftypheic" + bytes(40),
                "no_roadwork/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(60)})
    for rel, data in {**good, **bad, "labels.txt": b"not a label file", "unsorted/x.jpg": good["no_roadwork/deep/img0.jpg"]}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True); (tmp_path / rel).write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always"); ss = load_folder(tmp_path)
    assert sorted(s.id for s in ss) == sorted([*good, *bad]) and len(ss) == 26
    reasons = {s.id: _reason(s.image) for s in ss}
    assert {k for k, v in reasons.items() if v is None} == set(good)
    assert {k: reasons[k] for k in bad} == {"roadwork/scan.tif": "unsupported_format", "roadwork/notes.txt": "not_an_image",
                                            "roadwork/empty.jpg": "empty", "no_roadwork/photo.heic": "not_an_image",
                                            "no_roadwork/.DS_Store": "not_an_image"}
    assert all(s.label == int(s.id.startswith("roadwork/")) for s in ss)
    assert [w.category for w in caught] == [DatasetWarning]
    assert "2 files outside the class sub-folders" in str(caught[0].message) and "unsorted/x.jpg" in str(caught[0].message)


def test_animated_gif_is_its_first_frame_and_capped():
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30))]
    b = io.BytesIO(); frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    gif = b.getvalue()
    img = load_image(gif)
    assert img.mode == "RGB" and img.size == (64, 48) and img.getpixel((10, 10)) == (200, 30, 30)
    big = bytearray(gif); big[6:10] = (7000).to_bytes(2, "little") * 2  # the header claims 7000x7000 = 49 M pixels
    assert _reason(bytes(big)) == "decompression_bomb"
    assert _reason(bytes(gif) + bytes(MAX_BYTES)) == "absurd_size"


def test_parquet_follows_the_validator_rule(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    imgs = [_png((i * 30, 0, 0)) for i in range(7)]
    pq.write_table(pa.table({
        "index": list(range(7)),
        "image": [{"bytes": b, "path": None} for b in imgs],
        "label": [1, 1, 0, 0, 1, 0, 1],
        "scene_description": ["barriers", None, "", "cones", "digger", None, "workers"],
        "mask_center": ["(100, 50)", "[1, 1]", None, None, "[1, 2, 3]", "[]", "[7.5 9. ]"]}), tmp_path / "shard.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always"); ss = load_parquet(tmp_path / "shard.parquet")
    assert [(s.id, s.label, s.point) for s in ss] == [("shard#0", 1, (100.0, 50.0)), ("shard#2", 0, None),
                                                      ("shard#5", 0, None), ("shard#6", 1, (7.5, 9.0))]
    assert [s.image for s in ss] == [imgs[0], imgs[2], imgs[5], imgs[6]]
    msg = str(caught[0].message)
    assert caught[0].category is DatasetWarning and "skipped 3 of 7 rows" in msg, msg
    for part in ("1 label 1 with an empty scene_description (rows 1)", "1 label 0 with a scene_description (rows 3)",
                 "1 malformed mask_center (rows 4)"):
        assert part in msg, msg


def test_eval_reports_every_file_of_a_folder(tmp_path):
    "`stage1-cascade eval --data <folder>`: each file under the class folders is one row, a prediction or an error with its reason."
    root = tmp_path / "data"
    for i in range(4):
        sc = make_scene(200 + i, roadwork=bool(i % 2), size=256)
        (root / ("roadwork" if sc.label else "no_roadwork")).mkdir(parents=True, exist_ok=True)
        (root / ("roadwork" if sc.label else "no_roadwork") / f"s{i}.jpg").write_bytes(to_jpeg(sc.image))
    (root / "roadwork" / "notes.txt").write_text("not an image")
    os.mkfifo(root / "roadwork" / "pipe.jpg")
    with open(root / "no_roadwork" / "huge.jpg", "wb") as fh: fh.truncate(MAX_BYTES + 1)
    r = _cli("eval", "--data", str(root), "--out", str(tmp_path / "run"), "--no-frontier", "--no-progress", "--levels", "none")
    assert r["rc"] == 0, r["stderr"]
    rows = {(x := json.loads(l))["id"]: x for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()}
    errors = {k: v["error"].split(")")[0].removeprefix("invalid image (") for k, v in rows.items() if "error" in v}
    assert errors == {"roadwork/notes.txt": "not_an_image", "roadwork/pipe.jpg": "not_a_file", "no_roadwork/huge.jpg": "absurd_size"}
    assert sorted(k for k, v in rows.items() if "prediction" in v) == ["no_roadwork/s0.jpg", "no_roadwork/s2.jpg",
                                                                        "roadwork/s1.jpg", "roadwork/s3.jpg"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_skipped"] == 3
