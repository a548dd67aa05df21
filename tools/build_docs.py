#!/usr/bin/env python
"""Build the docs site from the notebooks, offline, into `_site/`.

Quarto (and so `nbdev-docs`) cannot be installed on every machine, so this renders the same
notebooks with MkDocs + mkdocs-jupyter. It prefers the executed copies the papermill suite leaves
in `_runs/nbs/` (outputs and plots included) and falls back to the clean notebook in `nbs/`.

    python tools/build_docs.py [--out _site] [--strict]
"""
from __future__ import annotations
import argparse, json, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebook_sources(root: Path = ROOT) -> dict[str, Path]:
    "Each notebook's stem -> the file to render (executed copy when there is one)."
    out = {}
    for nb in sorted((root/"nbs").glob("*.ipynb")):
        executed = root/"_runs"/"nbs"/nb.name
        out[nb.stem] = executed if executed.exists() else nb
    return out


def _title(nb: Path) -> str:
    "The first markdown heading of the notebook, else its file name."
    for c in json.loads(nb.read_text())["cells"]:
        if c["cell_type"] == "markdown":
            for line in "".join(c["source"]).splitlines():
                if line.startswith("# "): return line[2:].strip()
    return nb.stem


def build(out: Path = ROOT/"_site", strict: bool = False) -> dict[str, Path]:
    "Render every notebook and the guides in docs/ to a static site at `out`; return stem -> page."
    stage = ROOT/"_runs"/"mkdocs"
    shutil.rmtree(stage, ignore_errors=True)
    (stage/"docs").mkdir(parents=True)
    srcs = notebook_sources()
    nav = []
    for stem, src in srcs.items():
        if stem == "index": continue
        shutil.copy(src, stage/"docs"/f"{stem}.ipynb")
        nav.append({_title(src): f"{stem}.ipynb"})
    shutil.copy(ROOT/"README.md", stage/"docs"/"index.md")
    guides = []
    for md in sorted((ROOT/"docs").glob("*.md")):
        shutil.copy(md, stage/"docs"/md.name); guides.append({md.stem.replace("-", " ").capitalize(): md.name})
    cfg = {"site_name": "stage1_cascade", "docs_dir": "docs", "site_dir": str(out.resolve()),
           "theme": {"name": "material", "font": False},
           "nav": [{"Home": "index.md"}, {"Notebooks": nav}] + ([{"Guides": guides}] if guides else []),
           "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True}}],
           "use_directory_urls": True}
    (stage/"mkdocs.yml").write_text(json.dumps(cfg, indent=1))  # JSON is valid YAML
    cmd = [sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(stage/"mkdocs.yml")] + (["--strict"] if strict else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"mkdocs build failed ({r.returncode}):\n{r.stderr[-3000:]}")
    pages = {stem: out/stem/"index.html" for stem in srcs if stem != "index"}
    pages["index"] = out/"index.html"
    missing = [s for s, p in pages.items() if not p.exists()]
    if missing: raise SystemExit(f"docs: no page for {missing}")
    return pages


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT/"_site")
    ap.add_argument("--strict", action="store_true")
    a = ap.parse_args()
    pages = build(a.out, a.strict)
    print(f"docs: {len(pages)} pages in {a.out}/ (open {a.out}/index.html)")
