"""The README's notes for a new user say what the code does: the class-folder names a folder data set
may use, the `--levels` flag that turns off eval's augmentation, and where the quantize environment
goes and how to move it. Each claim is checked against the code, so a change to one shows here."""
import os, re, subprocess, sys
from pathlib import Path

from stage1_cascade.datasets import NEGATIVE_NAMES, POSITIVE_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT/"README.md").read_text()


def _paragraph(start: str) -> str:
    "The README paragraph that begins with `start`."
    return next(p for p in README.split("\n\n") if p.startswith(start))


def test_readme_names_every_class_folder_name():
    para = _paragraph("Class folders:")
    pos, neg = para.split(" for roadwork;", 1)
    assert set(re.findall(r"`([^`]+)`", pos)) - {"-", "_"} == set(POSITIVE_NAMES)
    assert set(re.findall(r"`([^`]+)`", neg.split(" for none.")[0])) == set(NEGATIVE_NAMES)


def test_readme_names_the_flag_that_turns_eval_augmentation_off():
    from typer.testing import CliRunner
    from stage1_cascade.cli import _levels, app
    para = _paragraph("Class folders:")
    assert "`--levels none`" in para and _levels("none") is None
    assert "one level drawn from 0-3 per image" in para
    help_ = " ".join(CliRunner().invoke(app, ["eval", "--help"], terminal_width=200).output.split())
    assert "--levels" in help_ and "[default: 0,1,2,3]" in help_   # augmented unless told otherwise


def _env_dir(**env) -> Path:
    "default_env_dir() in a fresh process with `env` (S1C_HOME is read at import)."
    clean = {k: v for k, v in os.environ.items() if k not in ("S1C_HOME", "S1C_MODELS_DIR")}
    code = "from stage1_cascade.compression.quant import default_env_dir; print(default_env_dir())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}, timeout=300,
                       check=True)
    return Path(r.stdout.strip().splitlines()[-1])


def test_readme_says_where_the_quantize_environment_goes(tmp_path, monkeypatch):
    from stage1_cascade.compression.quant import default_env_dir
    para = _paragraph("`eval` and `demo` refuse")
    assert "`<S1C_MODELS_DIR>/../envs/quantize`" in para and "`~/.cache/stage1_cascade/envs/quantize`" in para
    monkeypatch.delenv("S1C_MODELS_DIR", raising=False)
    if "S1C_HOME" not in os.environ:   # S1C_HOME is read when core is imported: this process shows the default
        assert default_env_dir() == Path.home()/".cache"/"stage1_cascade"/"envs"/"quantize"
    monkeypatch.setenv("S1C_MODELS_DIR", str(tmp_path/"big"/"models"))   # read at each call
    assert default_env_dir() == tmp_path/"big"/"envs"/"quantize"
    assert _env_dir(S1C_HOME=str(tmp_path/"home")) == tmp_path/"home"/"envs"/"quantize"
