"The papermill harness fails a test when a cell fails, and names the cell's error."
import json

import pytest

from test_notebooks import run_notebook


def _nb(cells):
    return {"cells": [{"id": f"c{i}", "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                       "source": c} for i, c in enumerate(cells)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_failing_cell_fails_with_its_error(tmp_path):
    nb = tmp_path/"bad.ipynb"
    nb.write_text(json.dumps(_nb(["x = 1", "raise ValueError('the cell broke: x=' + str(x))"])))
    with pytest.raises(pytest.fail.Exception, match=r"bad.ipynb: cell \[\d+\] `raise ValueError\('the cell broke.*` raised ValueError: the cell broke: x=1"):
        run_notebook(nb, out_dir=tmp_path/"out", parameters={})


def test_passing_notebook_runs_with_in_test(tmp_path):
    nb = tmp_path/"ok.ipynb"
    nb.write_text(json.dumps(_nb(["import os\nassert os.environ['IN_TEST'] == '1'"])))
    out = run_notebook(nb, out_dir=tmp_path/"out", parameters={})
    assert json.loads(out.read_text())["cells"][0]["outputs"] == []
