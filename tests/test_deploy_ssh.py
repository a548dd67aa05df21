"""`deploy ssh` for real over loopback: an OpenSSH server (Debian's openssh-server) on 127.0.0.1 on a free
port, with throw-away host and user keys, and a temporary folder as the "host". Three releases of this
checkout with a two-model plan in cpu mode (the stand-in fleet): the first and the second pass the
validator's gate, the third is broken on purpose (its miner's settings are invalid) and the second keeps
answering; then the faults (health timeout, unreachable host, refused key), `deploy rollback` and
`deploy status`.

What the test skips: the host's environment is NOT created with `bash tools/setup.sh` (minutes per
release); the `install` step links this test's own venv into each release instead (`Deploy.install`
is a parameter; the CLI's default is the setup script). The code each release runs is the release's
own copy of the source (PYTHONPATH points at it). The validator runs 30 rounds, not 200.

sshd missing: skip outside CI, fail in CI (`.ci/run` installs openssh-server)."""
import json, os, shlex, subprocess, sys
from pathlib import Path

import httpx, pytest

from stage1_cascade.deploy.ssh import (Deploy, HostUnreachable, KeyRefused, SSHTarget, StepFailed, rollback, ship,
                                       status)
from stage1_cascade.serve.fleet import free_port_block
from sshd_helper import free_port as _free_port, keygen as _keygen, start_sshd, stop_sshd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    "An sshd on 127.0.0.1:<free port> that lets this user in with a throw-away key; yields (target, host folder)."
    d = tmp_path_factory.mktemp("sshd")
    target, proc = start_sshd(d)
    yield target, d/"host"
    stop_sshd(proc)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    "A two-model plan (the routing's fast and power tiers) on free ports; both slots' ports fall in the free block."
    d = tmp_path_factory.mktemp("plan")
    base = free_port_block(160)   # slot 0: base, base+1, miner base+50; slot 1: +100
    subprocess.run([sys.executable, "-c", "from stage1_cascade.cli import main; main()", "plan", "--gpus", "1xH100-80GB",
                    "--models", "qwen3-vl-4b,kimi-vl-a3b", "--base-port", str(base), "--out", str(d)], check=True, capture_output=True, timeout=300)
    return d, base


def _answers(port: int) -> bool:
    try: return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    except httpx.HTTPError: return False


def _current(host: Path) -> str: return os.readlink(host/"current")


def test_deploy_upgrade_break_faults_rollback(sshd, plan_dir, tmp_path):
    target, host = sshd
    plan, base = plan_dir
    lines = []
    base_kw = dict(root=str(host), miner_port=base + 50, port_offset=100, rounds=30, min_score=0.05, health_timeout_s=300,
                   install=f"ln -sfn {shlex.quote(sys.prefix)} .venv", log=lines.append)
    mk = lambda **kw: Deploy(target, **{**base_kw, **kw})
    try:
        # 1: a fresh host, slot 0; the validator's gate passed and its figures came back
        a = ship(mk(), plan, ROOT, fetch_to=tmp_path/"a")
        assert a["slot"] == 0 and _current(host) == f"releases/{a['release']}" and _answers(a["miner_port"])
        summ = json.loads((tmp_path/"a"/"validate"/"summary.json").read_text())
        assert summ["rounds"] == 30 and summ["expected_score"] >= 0.05 and summ["errors"] == 0, summ
        print("release a, validator summary:", json.dumps(summ)[:600])
        # 2: the upgrade runs beside the first in slot 1, then the first is stopped
        b = ship(mk(), plan, ROOT, fetch_to=tmp_path/"b")
        assert b["slot"] == 1 and b["previous"] == a["release"] and _current(host) == f"releases/{b['release']}"
        assert _answers(b["miner_port"]) and not _answers(a["miner_port"])
        # 3: broken on purpose (its miner's settings are invalid): it is stopped, the second still answers
        with pytest.raises(StepFailed) as e:
            ship(mk(env={"S1C_DEADLINE_S": "-1"}), plan, ROOT)
        assert e.value.step in ("fleet", "health") and f"release {b['release']} is still running" in str(e.value)
        assert _current(host) == f"releases/{b['release']}" and _answers(b["miner_port"]) and not _answers(a["miner_port"])
        # faults: health timeout, unreachable host, refused key; each leaves the second release answering
        with pytest.raises(StepFailed) as e:
            ship(mk(health_timeout_s=0.2), plan, ROOT)
        assert e.value.step == "health" and "not healthy within 0.2 s" in str(e.value)
        closed = SSHTarget(target.dest, port=_free_port(), key=target.key, known_hosts=target.known_hosts, connect_timeout=5)
        with pytest.raises(HostUnreachable, match="cannot reach"):
            ship(Deploy(closed, root=str(host)), plan, ROOT)
        stranger = SSHTarget(target.dest, port=target.port, key=str(_keygen(tmp_path/"stranger")), known_hosts=target.known_hosts)
        with pytest.raises(KeyRefused, match="refused the key"):
            ship(Deploy(stranger, root=str(host)), plan, ROOT)
        assert _current(host) == f"releases/{b['release']}" and _answers(b["miner_port"])
        # rollback: the first release again (started, healthy, switched), the second stopped
        r = rollback(mk())
        assert r == {"release": a["release"], "replaced": b["release"], "miner_port": a["miner_port"]}
        assert _current(host) == f"releases/{a['release']}" and _answers(a["miner_port"]) and not _answers(b["miner_port"])
        st = status(mk())
        assert st["current"]["release"] == a["release"] and st["miner_health"].startswith("200")
        assert [s["state"] for s in st["fleet"]["servers"]] == ["healthy", "healthy"]
        assert sorted(st["releases"])[:2] == sorted([a["release"], b["release"]])
        # the same through the command line
        cli = subprocess.run([sys.executable, "-c", "from stage1_cascade.cli import main; main()", "deploy", "status", "--host",
                              target.dest, "--port", str(target.port), "--key", target.key, "--known-hosts", target.known_hosts,
                              "--root", str(host), "--json"], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["current"]["release"] == a["release"]
    finally:
        print("\n".join(lines))
        for rel in (host/"releases").glob("*") if (host/"releases").exists() else []:   # stop whatever still runs
            pid = rel/"miner.pid"
            if pid.exists():
                try: os.killpg(int(pid.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError): pass
            if (rel/"plan"/"fleet").exists():
                subprocess.run([sys.executable, "-c", "from stage1_cascade.cli import main; main()", "fleet", "down", "--plan",
                                str(rel/"plan")], capture_output=True, timeout=120)
