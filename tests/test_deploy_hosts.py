"""`deploy ssh` over two hosts for real: two OpenSSH servers (Debian's openssh-server) on two loopback addresses
(127.0.0.1 and 127.0.0.2, each its own "host" folder), a plan of two L4 cards with one stand-in server each, cut
by the hosts spec '2x(1xL4-24GB)': host 0 runs the fast tier's server and the miner, host 1 the power tier's
server, listening on 127.0.0.2 with the one API key. Two releases: the validator's gate passes using both hosts'
servers (host 1's server counts the requests it answered); the second also starts the axon on host 0 and a
validator's Dendrite gets an answer through it (when the axon's environment is here, as in test_axon). A third
fails on host 0 after both fleets started: stopped on both hosts, the second still answers on both. Then an
unreachable host 1, `rollback_hosts`, and `deploy status` with two --host (status_hosts).

As in test_deploy_ssh: the install step links this test's venv (not `bash tools/setup.sh`), the validator runs
30 rounds, as there (with 16 the expected score was too noisy for the 0.05 gate: 0.026 once). Both "hosts" are
one machine: what differs between real hosts (the network, the GPUs) is not tested."""
import json, os, shlex, subprocess, sys, time
from pathlib import Path

import httpx, pytest

from stage1_cascade.deploy.hosts import AxonStart, HostsError, rollback_hosts, ship_hosts
from stage1_cascade.deploy.ssh import Deploy, HostUnreachable, SSHTarget, StepFailed
from stage1_cascade.serve.axon import axon_env_missing, ensure_axon_env, make_test_wallets, query_axon, write_allowlist
from stage1_cascade.serve.fleet import free_port_block
from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.standin.server import metric_total, parse_metrics
from sshd_helper import free_port, start_sshd, stop_sshd

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from stage1_cascade.cli import main; main()"]
HOSTS = "2x(1xL4-24GB)"


@pytest.fixture(scope="module")
def sshds(tmp_path_factory):
    "Two sshd, on 127.0.0.1 and 127.0.0.2; yields [(target, host folder)] for host 0 and host 1."
    out, procs = [], []
    for h, addr in enumerate(("127.0.0.1", "127.0.0.2")):
        d = tmp_path_factory.mktemp(f"sshd{h}")
        target, proc = start_sshd(d, addr)
        out.append((target, d/"host")); procs.append(proc)
    yield out
    for p in procs: stop_sshd(p)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    "Two L4 cards, one server each: qwen3-vl-4b (fast) on card 0, kimi-vl-a3b (power) on card 1; both slots' ports free."
    d = tmp_path_factory.mktemp("plan")
    base = free_port_block(160)
    subprocess.run(CLI + ["plan", "--gpus", "2xL4-24GB", "--models", "qwen3-vl-4b,kimi-vl-a3b", "--base-port", str(base), "--out", str(d)],
                   check=True, capture_output=True, timeout=300)
    p = json.loads((d/"plan.json").read_text())
    assert [(x["model"], x["gpu"], x["status"]) for x in p["placements"]] == [("qwen3-vl-4b", 0, "resident"), ("kimi-vl-a3b", 1, "resident")]
    return d, base


def _answers(url: str) -> bool:
    try: return httpx.get(f"{url}/health", timeout=10).status_code == 200
    except httpx.HTTPError: return False


def _listening(port: int) -> bool:
    "True when something listens on 127.0.0.1:port."
    import socket
    with socket.socket() as s: return s.connect_ex(("127.0.0.1", port)) == 0


def _current(host: Path) -> str: return os.readlink(host/"current")


def _served(url: str, key: str) -> float:
    "Requests a stand-in server answered (its vLLM-named counter)."
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return metric_total(parse_metrics(r.text), "vllm:request_success_total")


def test_two_hosts_deploy_upgrade_fail_rollback(sshds, plan_dir, tmp_path):
    (t0, host0), (t1, host1) = sshds
    plan, base = plan_dir
    power = lambda slot: f"http://127.0.0.2:{base + 1 + 100 * slot}"   # host 1's server, in each slot
    miner = lambda slot: f"http://127.0.0.1:{base + 50 + 100 * slot}"
    lines, t_start = [], time.monotonic()
    kw = dict(miner_port=base + 50, port_offset=100, rounds=30, min_score=0.05, health_timeout_s=300,
              install=f"ln -sfn {shlex.quote(sys.prefix)} .venv", log=lambda s: lines.append(f"{time.monotonic() - t_start:6.1f} s  {s}"))
    mk = lambda k0={}, k1={}: [Deploy(t0, root=str(host0), **{**kw, **k0}), Deploy(t1, root=str(host1), **{**kw, **k1})]
    try:
        # 1: fresh hosts, slot 0 on both; the merged registry sends the power tier to host 1
        a = ship_hosts(mk(), plan, HOSTS, repo=ROOT, fetch_to=tmp_path/"a")
        assert a["slots"] == [0, 0] and a["addresses"] == ["127.0.0.1", "127.0.0.2"]
        assert a["servers"] == [["qwen3-vl-4b"], ["kimi-vl-a3b"]]
        assert _current(host0) == _current(host1) == f"releases/{a['release']}"
        assert _answers(miner(0)) and _answers(power(0))
        rel0, rel1 = host0/"releases"/a["release"], host1/"releases"/a["release"]
        key = (rel0/"plan/fleet/api_key").read_text()
        assert key == (rel1/"plan/fleet/api_key").read_text() and (rel1/"plan/fleet/api_key").stat().st_mode & 0o777 == 0o600
        assert not (rel1/"miner.pid").exists()   # host 1 runs servers only
        reg = json.loads((rel0/"registry.json").read_text())
        assert {m["model"]: m["url"] for m in reg["models"]} == {"qwen3-vl-4b": f"http://127.0.0.1:{base}", "kimi-vl-a3b": power(0)}
        summ = json.loads((tmp_path/"a"/"validate"/"summary.json").read_text())
        assert summ["rounds"] == 30 and summ["expected_score"] >= 0.05 and summ["errors"] == 0, summ
        served = _served(power(0), key.strip())
        assert served > 0, "host 1's server answered no request during the validator's rounds"
        print(f"release a: validator {json.dumps(summ)[:300]}; host 1's server answered {served:.0f} requests")
        # 2: the upgrade, slot 1 on both hosts, with the axon on host 0 when its environment is here; the first release stopped on both
        axon = None
        if os.environ.get("S1C_RUN_AXON_ENV") == "1" or not axon_env_missing():
            env = ensure_axon_env()
            w = make_test_wallets(tmp_path/"wallets", ["miner", "validator"], env)
            write_allowlist(tmp_path/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 50_000}])
            axon = AxonStart("miner", port=free_port(), wallet_path=str(tmp_path/"wallets"), allowlist=str(tmp_path/"allow.json"), ip="127.0.0.1")
        else: print(f"axon not tested: {axon_env_missing()}; S1C_RUN_AXON_ENV=1 creates its environment (CI does)")
        b = ship_hosts(mk(), plan, HOSTS, repo=ROOT, axon=axon)
        if axon:   # a validator's Dendrite, through the deployed axon, to the new release's miner
            got = query_axon({"ip": "127.0.0.1", "port": axon.port, "hotkey": w["miner"]["hotkey"]}, [synthetic_samples(1, seed=5)[0].image],
                             tmp_path/"wallets", "validator", env=env)
            assert got[0]["status_code"] == 200 and 0 <= got[0]["prediction"] <= 1, got
            assert (host0/"releases"/b["release"]/"axon.pid").exists()
        else: assert any(l.endswith("no axon was started (no --axon-wallet): validators reach this miner only once an axon runs") for l in lines)
        assert b["slots"] == [1, 1] and b["previous"] == [a["release"]] * 2
        assert _current(host0) == _current(host1) == f"releases/{b['release']}"
        assert _answers(miner(1)) and _answers(power(1)) and not _answers(miner(0)) and not _answers(power(0))
        # 3: host 0's miner misses its health deadline after both fleets started: the new release is stopped on both hosts
        with pytest.raises(StepFailed) as e:
            ship_hosts(mk(k0={"health_timeout_s": 0.2}), plan, HOSTS, repo=ROOT)
        assert e.value.step == "health" and str(e.value).startswith("host 0 (") and "not healthy within 0.2 s" in str(e.value)
        assert f"host 1: release {b['release']} still runs" in str(e.value)
        assert not _answers(power(0)) and not _answers(miner(0))   # the failed release's servers (slot 0) are down
        assert _current(host0) == _current(host1) == f"releases/{b['release']}" and _answers(miner(1)) and _answers(power(1))
        # host 1 unreachable: found at the first contact, nothing started anywhere
        closed = SSHTarget(t1.dest, port=free_port("127.0.0.2"), key=t1.key, known_hosts=t1.known_hosts, connect_timeout=5)
        with pytest.raises(HostUnreachable, match=r"^host 1 \(.*cannot reach"):
            ship_hosts([mk()[0], Deploy(closed, root=str(host1))], plan, HOSTS, repo=ROOT)
        with pytest.raises(HostsError, match="2 host"):
            ship_hosts(mk()[:1], plan, HOSTS, repo=ROOT)
        assert _answers(miner(1)) and _answers(power(1))
        # rollback: the first release again on both hosts, the second stopped on both
        r = rollback_hosts(mk())
        assert r == {"release": a["release"], "replaced": b["release"], "miner_port": base + 50, "hosts": 2}
        assert _current(host0) == _current(host1) == f"releases/{a['release']}"
        assert _answers(miner(0)) and _answers(power(0)) and not _answers(miner(1)) and not _answers(power(1))
        if axon: assert not (host0/"releases"/b["release"]/"axon.pid").exists() and not _listening(axon.port)
        # status, through the command line: two --host, the per-host --port, --key, --known-hosts, --root
        cli = subprocess.run(CLI + ["deploy", "status", "--host", t0.dest, "--host", t1.dest, "--port", str(t0.port), "--port", str(t1.port),
                                    "--key", t0.key, "--key", t1.key, "--known-hosts", t0.known_hosts, "--known-hosts", t1.known_hosts,
                                    "--root", str(host0), "--root", str(host1), "--json"], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        st = json.loads(cli.stdout)   # status_hosts' list, host 0 first
        assert [s["current"]["release"] for s in st] == [a["release"]] * 2 and st[0]["miner_health"].startswith("200")
        assert [[x["model"] for x in s["fleet"]["servers"]] for s in st] == [["qwen3-vl-4b"], ["kimi-vl-a3b"]]
        assert all(x["state"] == "healthy" for s in st for x in s["fleet"]["servers"]) and "miner_health" not in st[1]
    finally:
        print("\n".join(lines))
        for host in (host0, host1):   # stop whatever still runs
            for rel in (host/"releases").glob("*") if (host/"releases").exists() else []:
                pid = rel/"miner.pid"
                if pid.exists():
                    try: os.killpg(int(pid.read_text().split()[0]), 15)
                    except (ProcessLookupError, ValueError): pass
                if (rel/"plan"/"fleet").exists():
                    subprocess.run(CLI + ["fleet", "down", "--plan", str(rel/"plan")], capture_output=True, timeout=120)
