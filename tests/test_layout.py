"""The package's layout: one notebook per module, in dependency order, small modules, no side effects on import.

Each generated module names its notebook in its `# %% ../nbs/NN_name.ipynb` markers; notebooks are
ordered by their number and fastcore's letter (`01` < `01a` < `01b` < `02`). Every import of a
`stage1_cascade` module, including those inside functions, is read with `ast` (nothing is imported
to find them), and a module may only import modules of notebooks numbered at or before its own.
Hand-written files (scripts for other environments) import nothing from the package."""
import ast, json, os, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/"stage1_cascade"
MAX_LINES = 650  # "no module over ~600 lines", with a little room
_NB = re.compile(r"^# %% (?:\.\./)+nbs/([^/\s]+)\.ipynb", re.M)
_ORDER = re.compile(r"^(\d+)([a-z]*)_")


def _name(path: Path) -> str:
    "Dotted module name of a file under the package (`stage1_cascade.compression.kv`; a package's `__init__` is the package)."
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_name(p): p for p in sorted(PKG.rglob("*.py")) if p.name != "_modidx.py" and "__pycache__" not in p.parts}


def _notebook(path: Path) -> str | None:
    "The notebook a generated module comes from (None for a hand-written file)."
    found = set(_NB.findall(path.read_text()))
    assert len(found) <= 1, f"{path.relative_to(ROOT)} is exported from several notebooks: {sorted(found)}"
    return found.pop() if found else None


def _order(notebook: str) -> tuple[int, str]:
    m = _ORDER.match(notebook)
    assert m, f"notebook {notebook!r} has no number: name it NN_topic or NNa_topic"
    return int(m[1]), m[2]


def _resolve(dotted: str) -> str | None:
    "The package module `dotted` names, or the longest module prefix of it (an attribute import); None outside the package."
    while dotted:
        if dotted in FILES: return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def _imports(mod: str) -> dict[str, int]:
    "Package modules imported anywhere in `mod` (functions included) -> first line."
    path = FILES[mod]
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule` or `from module import name`
        for n in names:
            target = _resolve(n)
            if target and target != mod: out.setdefault(target, node.lineno)
    return out


GENERATED = {m: nb for m, p in FILES.items() if (nb := _notebook(p))}
HAND_WRITTEN = sorted(m for m in FILES if m not in GENERATED and FILES[m].name != "__init__.py")

def test_the_layout_is_found():
    "The parsing sees the package (a wrong path would pass every test below with nothing checked)."
    assert {"stage1_cascade.core", "stage1_cascade.data", "stage1_cascade.scenes", "stage1_cascade.scoring"} <= set(GENERATED)
    assert GENERATED["stage1_cascade.core"] == "00_core"
    assert _imports("stage1_cascade.scenes")["stage1_cascade.data"] > 0


def test_notebook_order_reads_fastcore_letters():
    assert sorted(["02_scoring", "01b_datasets", "10_serve_args", "01_data", "01a_scenes", "99_cli"], key=_order) == \
        ["01_data", "01a_scenes", "01b_datasets", "02_scoring", "10_serve_args", "99_cli"]


def test_one_module_per_notebook():
    seen = {}
    for m, nb in GENERATED.items(): seen.setdefault(nb, []).append(m)
    assert {nb: ms for nb, ms in seen.items() if len(ms) > 1} == {}


@pytest.mark.parametrize("mod", sorted(GENERATED))
def test_no_import_from_a_later_notebook(mod):
    mine = _order(GENERATED[mod])
    later = {t: f"{GENERATED[t]} (line {ln})" for t, ln in _imports(mod).items()
             if t in GENERATED and _order(GENERATED[t]) > mine}
    assert later == {}, f"{mod} ({GENERATED[mod]}) imports from later notebooks: {later}"


@pytest.mark.parametrize("mod", sorted(GENERATED))
def test_module_is_small(mod):
    n = len(FILES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{mod} has {n} lines (at most {MAX_LINES}): split it by role"


@pytest.mark.parametrize("mod", sorted(m for m, p in FILES.items() if p.read_text().strip()))  # an empty package __init__ holds no code
def test_module_says_its_role(mod):
    doc = ast.get_docstring(ast.parse(FILES[mod].read_text()))
    assert doc and doc.strip(), f"{mod} has no module docstring: its notebook's H1 needs a one-line `>` summary"


def test_hand_written_files_import_nothing_from_the_package():
    "Scripts run in another interpreter, where `stage1_cascade` may not exist."
    assert {m: sorted(_imports(m)) for m in HAND_WRITTEN if _imports(m)} == {}


def test_importing_the_package_changes_no_environment():
    "Importing a module sets no environment variable (offline-ness, progress bars: the caller's choice)."
    mods = sorted(m for m in FILES if m not in HAND_WRITTEN)  # scripts run in their own interpreter, never imported here
    third_party = set()
    for p in (FILES[m] for m in mods):
        for node in ast.parse(p.read_text()).body:  # module level: what importing it runs
            if isinstance(node, ast.Import): third_party |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level: third_party.add(node.module)
    third_party = sorted(n for n in third_party if n and n.split(".")[0] not in ("stage1_cascade", "__future__"))
    code = ("import importlib, json, os\n"
            f"for m in {third_party!r}: importlib.import_module(m)\n"  # their own side effects (OpenCV, torch) are not ours
            "before = dict(os.environ)\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))))")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "YOLO_"))}
    keep["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=keep, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_a_title_and_a_summary(nb):
    "A newcomer reads what a notebook teaches before any code: an H1, then a `>` summary, in the first cell."
    first = json.loads(nb.read_text())["cells"][0]
    src = "".join(first["source"])
    assert first["cell_type"] == "markdown" and src.startswith("# "), f"{nb.name}: first cell is not an H1"
    assert any(l.startswith("> ") for l in src.splitlines()), f"{nb.name}: no one-line '>' summary under the title"
