"""The README's transfer and distillation tables are the recorded runs' figures (issue 12).

`stage1_cascade/assets/train/transfer.json` and `distill.json` are written by `record_transfer` and
`record_distill` (each records the command that reproduces it); every row of the README's tables
is rebuilt here from those files, so a figure edited by hand, or a re-run not carried to the
README, fails."""
import json
from pathlib import Path

from stage1_cascade.core import assets_dir
from stage1_cascade.transfer import SCENE_FAMILIES, TRANSFER_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT/"README.md").read_text()
TRANSFER = json.loads((assets_dir()/"train"/"transfer.json").read_text())
DISTILL = json.loads((assets_dir()/"train"/"distill.json").read_text())
FAMS = list(SCENE_FAMILIES)


def _ci(d): return f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"


def test_recorded_runs_say_how_they_were_made():
    assert TRANSFER["command"].startswith("python -c \"from stage1_cascade.transfer import record_transfer;")
    assert DISTILL["command"].startswith("python -c \"from stage1_cascade.distill import record_distill;")
    assert set(TRANSFER["rows"]) == set(TRANSFER_VARIANTS) and set(DISTILL["stage1"]) == {"before", "after"}
    assert f"`{TRANSFER['command']}`" in README and f"`{DISTILL['command']}`" in README


def test_readme_transfer_table_is_the_recorded_one():
    for name, row in TRANSFER["rows"].items():
        cells = [_ci(row["mcc"][f]) + ("" if f == "in_family" else f" (gap {row['gap'][f]:+.3f})") for f in FAMS]
        assert f"| {name} | " + " | ".join(cells) + " |" in README, name


def test_readme_distillation_tables_are_the_recorded_ones():
    s = DISTILL["stage1"]
    for n in ("before", "after"):
        row = f"| {n} | {_ci(s[n]['mcc'])} | {_ci(s[n]['accuracy'])} | {_ci(s[n]['reward'])} | " + \
              " | ".join(f"{s[n]['by_source'][f]['mcc']:.3f}" for f in FAMS) + " |"
        assert row in README, n
    for a, b in zip(DISTILL["routing"]["before"], DISTILL["routing"]["after"]):
        assert f"| {a['budget']:.1f} | {a['vlm_calls']:.3f} | {a['reward']:.3f} | {b['vlm_calls']:.3f} | {b['reward']:.3f} |" in README
    assert DISTILL["equal_reward"]["verdict"] in README
    d = DISTILL["stage1_delta"]
    assert f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in README
