"""The README's demo table is what `stage1-cascade demo` prints: rerun the demo and compare every figure
that does not depend on the machine's speed (the p50 latency column does, so it is not compared)."""
import re
from pathlib import Path

from stage1_cascade.bench import demo, summary_rows

ROOT = Path(__file__).resolve().parents[1]


def readme_demo_rows() -> dict:
    "predictor -> the README table's cells, from the block under 'What the demo prints'."
    text = (ROOT/"README.md").read_text()
    block = text.split("## What the demo prints", 1)[1].split("```", 2)[1]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 7 and re.fullmatch(r"[a-z0-9_]+", cells[0]): rows[cells[0]] = cells
    return rows


def test_readme_demo_table_is_what_demo_prints(tmp_path):
    readme = readme_demo_rows()
    assert set(readme) == {"cascade", "stage1_only", "top_tier_only"}, readme
    n = int(re.search(r"\((\d+) synthetic hold-out images", (ROOT/"README.md").read_text()).group(1))
    _, m = demo(n, tmp_path/"demo", progress=False, echo=False)
    for name, reward, mcc, acc, calls, _p50, ema in summary_rows(m):
        got = [f"{reward:.3f}", f"{mcc:.3f}", f"{acc:.3f}", f"{calls:.3f}", f"{ema:.3f}"]
        want = [readme[name][i] for i in (1, 2, 3, 4, 6)]
        assert got == want, f"{name}: demo prints {got}, README says {want}: rerun the demo and update nbs/index.ipynb"
