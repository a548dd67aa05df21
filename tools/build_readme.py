#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb (what `nbdev-readme` does where Quarto is installed).

Markdown cells are copied; code cells become fenced Python blocks followed by their text output.
    python tools/build_readme.py [--check]   # --check: exit 1 if README.md is out of date
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT/"nbs"/"index.ipynb") -> str:
    "README text for the notebook at `nb_path`."
    parts = []
    for c in json.loads(nb_path.read_text())["cells"]:
        src = "".join(c["source"]).strip()
        if not src or src.startswith("#| hide"): continue
        if c["cell_type"] == "markdown": parts.append(src)
        elif c["cell_type"] == "code":
            parts.append(f"```python\n{src}\n```")
            for o in c.get("outputs", []):
                text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
                if text.strip(): parts.append(f"```\n{text.rstrip()}\n```")
    return "<!-- generated from nbs/index.ipynb by tools/build_readme.py: edit the notebook -->\n\n" + "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT/"README.md"
    if "--check" in sys.argv:
        ok = readme.exists() and readme.read_text() == text
        print("README.md is up to date" if ok else "README.md is out of date: run python tools/build_readme.py")
        sys.exit(0 if ok else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
