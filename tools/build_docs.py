#!/usr/bin/env python
"""Build the docs site from the notebooks, offline, into `_site/`.

Quarto (and so `nbdev-docs`) cannot be installed on every machine, so this renders the same
notebooks with MkDocs + mkdocs-jupyter. It prefers the executed copies the papermill suite leaves
in `_runs/nbs/` (outputs and plots included; `pytest tests/test_notebooks.py` writes them) and
falls back to the clean notebook in `nbs/`.

Each notebook is cleaned first, as nbdev's own site shows its notebooks: nbdev directives (`#| ...`)
are stripped from the code, cells they hide are dropped, papermill's injected-parameters cell is
dropped, and stderr outputs that carry a Python warning or a path of this machine are removed.

    python tools/build_docs.py [--out _site] [--strict]
"""
from __future__ import annotations
import argparse, copy, json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")  # `#| export`, `#|hide`, `#| echo: false`
_WARNING = re.compile(r"\b\w+Warning:")                                # `path:12: TqdmWarning: ...`
_MACHINE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.~+-]+/)+[\w.~+-]*")      # /tmp/x/y, /home/u/..., not a URL's path


def directives(source: str) -> tuple[dict[str, str], str]:
    "The directives leading a code cell ({name: value}, names lower-case) and the source without them."
    lines, d, i = source.splitlines(), {}, 0
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if m: d[m[1].lower()] = m[2].lower()
        elif line.strip(): break
    else: i = len(lines)
    return d, "\n".join(lines[i:]).strip("\n")


def _shows(o: dict) -> bool:
    "Whether an output belongs on the site: not a stderr stream with a Python warning or a path of this machine."
    if o.get("output_type") != "stream" or o.get("name") != "stderr": return True
    text = "".join(o.get("text", ""))
    return not (_WARNING.search(text) or _MACHINE_PATH.search(text))


def clean_notebook(nb: dict) -> dict:
    "A copy of `nb` as the site shows it: directives stripped, hidden and injected cells dropped, noisy stderr removed."
    nb = copy.deepcopy(nb)
    cells = []
    for c in nb["cells"]:
        if "injected-parameters" in c.get("metadata", {}).get("tags", []): continue  # papermill's `# Parameters`
        if c["cell_type"] == "code":
            d, src = directives("".join(c["source"]))
            if "hide" in d or d.get("include") == "false": continue
            c["source"] = src
            if d.get("output") == "false": c["outputs"] = []
            c["outputs"] = [o for o in c.get("outputs", []) if _shows(o)]
            if d.get("echo") == "false" or "hide_input" in d:
                c.setdefault("metadata", {}).setdefault("tags", []).append("remove_input")
            if not src.strip() and not c["outputs"]: continue  # only directives, e.g. `#| default_exp core`
        cells.append(c)
    nb["cells"] = cells
    return nb


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
        (stage/"docs"/f"{stem}.ipynb").write_text(json.dumps(clean_notebook(json.loads(src.read_text())), indent=1))
        nav.append({_title(src): f"{stem}.ipynb"})
    shutil.copy(ROOT/"README.md", stage/"docs"/"index.md")
    guides = []
    for md in sorted((ROOT/"docs").glob("*.md")):
        shutil.copy(md, stage/"docs"/md.name); guides.append({md.stem.replace("-", " ").capitalize(): md.name})
    cfg = {"site_name": "stage1_cascade", "docs_dir": "docs", "site_dir": str(out.resolve()),
           "theme": {"name": "material", "font": False},
           "nav": [{"Home": "index.md"}, {"Notebooks": nav}] + ([{"Guides": guides}] if guides else []),
           "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True,
                                            "remove_tag_config": {"remove_input_tags": ["remove_input"]}}}],
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
