"""The fleet for real: stand-in server processes started from the plan's `vllm serve` arguments, through
the `stage1-cascade` script in its own process, checked by PID; the secure defaults of every rendered
command; supervision (a hung server, a crashed one, one that keeps dying); Ctrl-C in the foreground.

A three-server plan (one H100: one power model resident, two that sleep in turn) keeps it light."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

from stage1_cascade.serve.args import InsecureServe, check_secure, plan as render_plan, serve_args, StackConfig
from stage1_cascade.serve.fleet import (StartFailed, fleet_down, fleet_specs, fleet_status, fleet_up, free_port_block, group_alive,
                                        pid_alive, read_state)
from stage1_cascade.serve.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
THREE = ("1xH100-80GB", "qwen3-vl-30b-a3b,internvl3.5-30b-a3b,kimi-vl-a3b")
RESIDENT = "qwen3-vl-30b-a3b"


def cli(*args, timeout=300, **kw):
    "The real `stage1-cascade` entry point in its own process."
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-c", "from stage1_cascade.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)


def wait_for(pred, timeout=90, every=0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (v := pred()): return v
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def row(state_dir, model):
    return next(r for r in fleet_status(state_dir)["servers"] if r["model"] == model)


def all_pids(state_dir):
    return sorted({p for r in read_state(state_dir)["servers"] for p in r["pids"]})


@pytest.fixture
def three(tmp_path):
    d = tmp_path/"plan"
    render_plan(*THREE, out=d, base_port=free_port_block(3))   # ports of its own: other fleets may run beside it
    yield d
    if (d/"fleet"/"state.json").exists(): fleet_down(d/"fleet")   # never leave processes behind a failed test


def test_every_rendered_command_is_secure_by_default(tmp_path):
    render_plan("2xH100-80GB", "default26", out=tmp_path/"p")
    for mode in ("cpu", "gpu"):
        specs = fleet_specs(tmp_path/"p", mode, python=sys.executable)
        assert len(specs) == 13
        for s in specs:
            assert s.argv[s.argv.index("--host") + 1] == "127.0.0.1"
            assert "--api-key" not in s.argv and "VLLM_API_KEY" not in s.env   # the key is added at start, in the environment
            assert ("VLLM_SERVER_DEV_MODE" in s.env) == s.sleeps
    remote = fleet_specs(tmp_path/"p", "cpu", host="0.0.0.0")
    assert {s.host for s in remote if s.sleeps} == {"127.0.0.1"} and {s.host for s in remote if not s.sleeps} == {"0.0.0.0"}
    with pytest.raises(InsecureServe, match="beyond loopback"):
        check_secure(serve_args(StackConfig("m", host="10.1.2.3")), {"VLLM_API_KEY": "k"})
    with pytest.raises(InsecureServe, match="no API key"):
        check_secure(serve_args(StackConfig("m")), {})


def test_cli_up_status_down_leaves_no_process(three):
    r = cli("fleet", "up", "--plan", three, "--mode", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    state = three/"fleet"
    st = json.loads(cli("fleet", "status", "--plan", three, "--json").stdout)
    assert st["phase"] == "up" and st["supervisor_alive"]
    assert sorted(s["state"] for s in st["servers"]) == ["healthy", "sleeping", "sleeping"]
    base = json.loads((three/"plan.json").read_text())["placements"]
    assert {(s["model"], s["port"], s["tier"], s["gpu"]) for s in st["servers"]} == {(p["model"], p["port"], "power", 0) for p in base}
    assert oct((state/"api_key").stat().st_mode & 0o777) == "0o600"
    key = (state/"api_key").read_text().strip()
    for s in st["servers"]:   # the key is in no command line
        assert key not in Path(f"/proc/{s['pid']}/cmdline").read_bytes().decode(errors="replace")
    reg = Registry.load(state/"registry.json")
    url = reg.entry(RESIDENT).url
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"] == RESIDENT
    pids = all_pids(state)
    r = cli("fleet", "down", "--plan", three)
    assert r.returncode == 0 and "orphans: 0" in r.stdout, r.stdout + r.stderr
    assert [p for p in pids if pid_alive(p) or group_alive(p)] == []
    assert not pid_alive(st["supervisor_pid"])


def test_port_in_use_is_refused_before_anything_starts(three):
    taken = next(p for p in json.loads((three/"plan.json").read_text())["placements"] if p["model"] == "kimi-vl-a3b")["port"]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", taken)); s.listen(1)
        r = cli("fleet", "up", "--plan", three, "--mode", "cpu")
    err = " ".join(r.stderr.split())   # rich wraps long lines
    assert r.returncode == 1 and "port already in use" in err and f"kimi-vl-a3b (127.0.0.1:{taken})" in err, r.stderr
    assert not (three/"fleet"/"state.json").exists()   # no supervisor ran, no server started


def test_a_server_that_cannot_start_is_named_and_nothing_is_left(three):
    with pytest.raises(StartFailed, match=r"(?s)qwen3-vl-30b-a3b exited.*scorer spec"):
        fleet_up(three, three/"fleet", "cpu", scorer="no-such-scorer")
    st = fleet_status(three/"fleet")
    assert st["phase"] == "failed" and not st["supervisor_alive"]
    assert [p for p in all_pids(three/"fleet") if pid_alive(p)] == []


def test_supervision_hung_crashed_and_given_up(three):
    state = three/"fleet"
    fleet_up(three, state, "cpu", check_s=0.2, health_timeout_s=2.0, unhealthy_after=2, backoff_s=0.2, max_restarts=2)
    hung = row(state, RESIDENT)["pid"]
    os.kill(hung, signal.SIGSTOP)   # alive but answering nothing: /health fails, the server is replaced
    r1 = wait_for(lambda: (r := row(state, RESIDENT))["restarts"] == 1 and r["state"] == "healthy" and r)
    assert r1["pid"] != hung and not pid_alive(hung)
    os.kill(r1["pid"], signal.SIGKILL)   # a crash: restarted again
    r2 = wait_for(lambda: (r := row(state, RESIDENT))["restarts"] == 2 and r["state"] == "healthy" and r)
    os.kill(r2["pid"], signal.SIGKILL)   # a third death within the window: past max_restarts=2, it stays failed
    wait_for(lambda: row(state, RESIDENT)["state"] == "failed")
    assert Registry.load(state/"registry.json").entry(RESIDENT).state == "failed"   # the router stops sending to it
    met = httpx.get(fleet_status(state)["control_url"] + "/metrics").text
    assert f'stage1_fleet_server_state{{model="{RESIDENT}",tier="power",state="failed"}} 1' in met
    assert len(r2["restart_s"]) == 2 and all(x > 0 for x in r2["restart_s"])
    pids = all_pids(state)
    assert len(pids) == 5   # 3 first starts + 2 restarts
    assert fleet_down(state)["orphans"] == []
    assert [p for p in pids if pid_alive(p) or group_alive(p)] == []


def test_foreground_stops_everything_on_ctrl_c(three):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", "from stage1_cascade.cli import main; main()", "fleet", "up", "--plan", str(three),
                          "--mode", "cpu", "--foreground"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_state(three/"fleet").get("phase") == "up" and read_state(three/"fleet").get("control_url"))
        pids = all_pids(three/"fleet")
        assert read_state(three/"fleet")["supervisor_pid"] == p.pid   # the supervisor is this process
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0, p.stderr.read()[-2000:]
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert [x for x in pids if pid_alive(x) or group_alive(x)] == []
    assert fleet_status(three/"fleet")["phase"] == "stopped"
