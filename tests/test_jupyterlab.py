"""`jupyter lab` starts from the environment tools/setup.sh makes and serves the notebooks.

The dev extra installs JupyterLab and ipywidgets (tqdm's bars render as widgets there). This starts
a real JupyterLab server headless on a free loopback port with a token, reads the notebook folder,
one notebook and the kernel specs through its REST API with httpx, and stops it."""
import os, secrets, signal, socket, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on the repository root: (base URL, token); stopped afterwards."
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path/"config"), "JUPYTER_RUNTIME_DIR": str(tmp_path/"runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path/"workspaces")}  # nothing read from or left in ~/.jupyter
    log = open(tmp_path/"lab.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                          "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                          f"--ServerApp.root_dir={ROOT}"] + (["--allow-root"] if os.geteuid() == 0 else []), stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert p.poll() is None, f"jupyter lab exited with {p.returncode}:\n{(tmp_path/'lab.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}, timeout=2).status_code == 200: break
            except httpx.HTTPError: pass
            assert time.monotonic() < deadline, f"jupyter lab not answering after 90 s:\n{(tmp_path/'lab.log').read_text()[-3000:]}"
            time.sleep(0.5)
        yield base, token
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try: p.wait(timeout=20)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait()
        log.close()


@pytest.mark.timeout(180)
def test_jupyter_lab_serves_the_notebooks(lab):
    base, token = lab
    auth = {"Authorization": f"token {token}"}
    assert httpx.get(f"{base}/api/contents/nbs", timeout=10).status_code == 403  # no token, no notebooks
    r = httpx.get(f"{base}/api/contents/nbs", headers=auth, timeout=10)
    assert r.status_code == 200, r.text[:500]
    served = {c["name"] for c in r.json()["content"] if c["type"] == "notebook"}
    assert served == {p.name for p in (ROOT/"nbs").glob("*.ipynb")}
    nb = httpx.get(f"{base}/api/contents/nbs/00_core.ipynb", headers=auth, timeout=10).json()
    assert nb["type"] == "notebook" and nb["content"]["cells"][0]["source"].startswith("# ")
    specs = httpx.get(f"{base}/api/kernelspecs", headers=auth, timeout=10).json()
    assert "python3" in specs["kernelspecs"], specs  # the kernel papermill runs the notebooks with
    page = httpx.get(f"{base}/lab", headers=auth, timeout=10)
    assert page.status_code == 200 and "JupyterLab" in page.text
    # ipywidgets' front end is installed, so tqdm.auto draws widgets instead of printing bars
    assert httpx.get(f"{base}/lab/extensions/@jupyter-widgets/jupyterlab-manager/package.json", headers=auth,
                     timeout=10).status_code == 200
