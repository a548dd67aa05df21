"""The CPU suite: every notebook in nbs/ runs top to bottom with papermill in cpu mode.

One test per notebook. Executed copies go to `_runs/nbs/` (ignored by git) and feed the docs
site. A failing cell fails the test, and the message shows the cell's error."""
import json, os, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith("_"))
OUT = ROOT/"_runs"/"nbs"


def run_notebook(nb: Path, out_dir: Path = OUT, parameters: dict | None = None, timeout_s: int = 900) -> Path:
    "Execute `nb` with papermill in cpu mode; return the executed copy's path."
    import papermill as pm
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir/nb.name
    saved = {k: os.environ.get(k) for k in ("IN_TEST", "S1C_FIGURES_DIR")}
    os.environ["IN_TEST"] = "1"  # the kernel inherits it: a trailing nbdev_export() is a no-op
    os.environ["S1C_FIGURES_DIR"] = str(out_dir/"figures")  # notebooks record their figures here
    try:
        pm.execute_notebook(str(nb), str(out), parameters=parameters or {"mode": "cpu"},
                            kernel_name="python3", language="python", cwd=str(nb.parent),
                            progress_bar=False, execution_timeout=timeout_s)
    except pm.PapermillExecutionError as e:
        tb = _ANSI.sub("", "".join(e.traceback[-3:]) if e.traceback else "")
        pytest.fail(f"{nb.name}: cell [{e.exec_count}] `{_failing_source(out, e.exec_count)}` raised "
                    f"{e.ename}: {e.evalue}\n{tb}\nexecuted copy: {out}", pytrace=False)
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failing_source(executed: Path, exec_count: int) -> str:
    "First line of the cell that ran as `exec_count` in the executed copy."
    try: cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError): return "?"
    for c in cells:
        if c.get("execution_count") == exec_count:
            return "".join(c["source"]).strip().splitlines()[0][:120]
    return "?"


def test_every_notebook_is_collected():
    "The suite finds the notebooks (a wrong path would otherwise pass with nothing run)."
    assert (ROOT/"nbs"/"00_core.ipynb") in NBS and len(NBS) >= 2


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb):
    out = run_notebook(nb)
    assert out.exists() and out.stat().st_size > 0
