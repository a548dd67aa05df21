"The docs site builds with one command, offline, and has a page per notebook."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_has_a_page_per_notebook(tmp_path):
    out = tmp_path/"site"
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"build_docs.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    for nb in (ROOT/"nbs").glob("*.ipynb"):
        page = out/"index.html" if nb.stem == "index" else out/nb.stem/"index.html"
        assert page.exists(), f"no page for {nb.name}"
        assert "stage1_cascade" in page.read_text(errors="ignore")
