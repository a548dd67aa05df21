"""The docs site builds with one command, offline, and has a page per notebook; its pages show the
notebooks as nbdev's own site does: no `#|` directives, no papermill parameters cell, no warning
or stderr line with a path of the machine that ran them."""
import html, importlib.util, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_docs", ROOT/"tools"/"build_docs.py")
build_docs = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(build_docs)

NOT_ON_A_PAGE = ("#| export", "#| default_exp", "#| hide", "#| slow", "injected-parameters", "TqdmWarning")


def _code(src, outputs=(), tags=()):
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": src,
            "outputs": list(outputs), "execution_count": 1}


def _stderr(text): return {"output_type": "stream", "name": "stderr", "text": text}


def test_clean_notebook_strips_what_nbdev_hides():
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Title\n\nProse may say `#| export` in backticks."},
        _code("#| default_exp core"),
        _code("# Parameters\nmode = \"cpu\"\n", tags=["injected-parameters"]),
        _code("mode = \"cpu\"  # the notebook's own defaults", tags=["parameters"]),
        _code("#| export\ndef f(): return 1"),
        _code("#|hide\nimport nbdev; nbdev.nbdev_export()"),
        _code("#| include: false\nsecret = 1"),
        _code("#| slow\nf()", outputs=[_stderr("/work/x/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: "
                                                "IProgress not found\n"),
                                        _stderr("evaluated 3 images\n"),
                                        _stderr("2026-01-01 WARNING bench: /tmp/tmpab12/predictions.jsonl: dropped\n"),
                                        _stderr("server at http://127.0.0.1:8001/v1 answered\n"),
                                        {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {},
                                         "execution_count": 1}]),
        _code("#| echo: false\nprint('shown without its code')", outputs=[{"output_type": "stream", "name": "stdout",
                                                                            "text": "shown without its code\n"}]),
    ]}
    out = build_docs.clean_notebook(nb)
    src = [c["source"] for c in out["cells"]]
    assert src == [nb["cells"][0]["source"], "mode = \"cpu\"  # the notebook's own defaults", "def f(): return 1", "f()",
                   "print('shown without its code')"]
    kept = [o.get("text", o.get("data")) for o in out["cells"][3]["outputs"]]
    assert kept == ["evaluated 3 images\n", "server at http://127.0.0.1:8001/v1 answered\n", {"text/plain": "1"}]
    assert out["cells"][4]["metadata"]["tags"] == ["remove_input"]
    assert len(nb["cells"]) == 9 and nb["cells"][4]["source"].startswith("#| export")   # the input is not changed


def _page_text(page: Path) -> str:
    "What a reader sees on a page: the HTML without its tags."
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(errors="ignore")))


def test_docs_site_has_a_page_per_notebook(tmp_path):
    out = tmp_path/"site"
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"build_docs.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    for nb in (ROOT/"nbs").glob("*.ipynb"):
        page = out/"index.html" if nb.stem == "index" else out/nb.stem/"index.html"
        assert page.exists(), f"no page for {nb.name}"
        assert "stage1_cascade" in page.read_text(errors="ignore")
    for nb in (ROOT/"nbs").glob("[0-9]*.ipynb"):
        text = _page_text(out/nb.stem/"index.html")
        shown = [s for s in NOT_ON_A_PAGE if s in text]
        assert shown == [], f"{nb.stem}: the page shows {shown}"
        assert not re.search(r"^\s*# Parameters\s*$", text, re.M), f"{nb.stem}: papermill's parameters cell is shown"
    core = _page_text(out/"00_core"/"index.html")
    assert "def atomic_write_bytes" in core and "Atomic files" in core   # stripping the directives kept the code
