"""The bittensor axon on loopback, for real: local wallets, the axon script in its own environment on
127.0.0.1, a real bittensor `Dendrite` sending `ImageSynapse`s. Simulated, and only these: the allow-list
file stands in for the chain's metagraph, and the dendrite's external-IP lookup (an internet call made in
`Dendrite.__init__`) is replaced by 127.0.0.1 in `scripts/dendrite_client.py`. The miner service is a real
loopback HTTP server defined here that speaks the contract's `POST /v1/predict` (it stands in for
`stage1-cascade miner`): it answers a fixed p per image, or fails as a test asks.

The axon environment (bittensor 9.12.2 with the subnet's pins) is made by `serve.axon.ensure_axon_env`.
With S1C_RUN_AXON_ENV=1 (.ci/run sets it) the first test that needs it creates it; otherwise the tests
that need it run when it already exists and skip, saying how to make it, when it does not."""
import base64, json, os, re, subprocess, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stage1_cascade.scenes import synthetic_samples
from stage1_cascade.serve.axon import (AxonConfig, AxonError, axon_env_missing, default_axon_env_dir, ensure_axon_env,
                                       is_ss58, launch_axon, make_test_wallets, model_card, query_axon, write_allowlist)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def env():
    "The axon environment: created under S1C_RUN_AXON_ENV=1, else used if present, else the test is skipped."
    if os.environ.get("S1C_RUN_AXON_ENV") == "1":
        e = ensure_axon_env()
        print(f"axon environment {'created' if e.created else 'reused'} in {e.seconds:.1f} s: {e.versions}")
        return e
    if why := axon_env_missing(): pytest.skip(f"{why}; or set S1C_RUN_AXON_ENV=1 to create it here (CI does)")
    return ensure_axon_env()


class MinerStandIn:
    """A real HTTP server on loopback speaking the miner service's `POST /v1/predict` (stands in for
    `stage1-cascade miner` until it lands). `behaviour` says how it answers: 'ok' (p from the image's size, so
    each image has its own answer), 'nan', 'out_of_range', '422' (bad image), 'slow' (past any deadline)."""

    def __init__(self, key: str | None = None):
        self.behaviour, self.key, self.seen = "ok", key, []
        self.release = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if outer.key and self.headers.get("Authorization") != f"Bearer {outer.key}":
                    return self._send(401, {"error": {"reason": "unauthorized", "message": "bad key"}})
                b = outer.behaviour
                if b == "slow": outer.release.wait(60)
                if b == "422": return self._send(422, {"error": {"reason": "not_an_image", "message": "cannot decode"}})
                p = {"nan": float("nan"), "out_of_range": 1.7}.get(b, outer.p_of(body["image"]))
                self._send(200, {"prediction": p, "tier": "stage1", "trace": {}})

            def _send(self, code, obj):
                out = json.dumps(obj).encode()  # NaN goes out as the bare token NaN, as Python's json writes it
                try:
                    self.send_response(code); self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError): pass   # the axon stopped waiting ('slow'): expected

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    @staticmethod
    def p_of(image_b64: str) -> float:
        return (len(base64.b64decode(image_b64)) % 97) / 96

    def close(self):
        self.release.set(); self.server.shutdown(); self.server.server_close()


@pytest.fixture(scope="module")
def loop(env, tmp_path_factory):
    "Wallets (miner, validator, a registered non-validator, a stranger), the allow-list, the stand-in miner, the axon."
    d = tmp_path_factory.mktemp("axon")
    w = make_test_wallets(d/"wallets", ["miner", "validator", "member", "stranger"], env)
    write_allowlist(d/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 50_000},
                                     {"hotkey": w["member"]["hotkey"], "validator_permit": False, "stake": 10}])
    (d/"key").write_text("s1c-test-key-123\nthe first line is the key, as the miner service reads its key file\n")
    miner = MinerStandIn(key="s1c-test-key-123")
    cfg = AxonConfig(str(d/"wallets"), "miner", str(d/"allow.json"), miner_url=miner.url, miner_key_file=str(d/"key"),
                     deadline_s=9.0, margin_s=1.0, fallback_p=0.0)
    ax = launch_axon(cfg, env, d/"run")
    yield dict(d=d, w=w, miner=miner, ax=ax, env=env)
    code = ax.stop()
    miner.close()
    assert code == 0, ax.log_text()[-2000:]


def ask(loop, images, who="validator", timeout_s=9.0):
    return query_axon(loop["ax"], images, loop["d"]/"wallets", who, timeout_s=timeout_s, env=loop["env"])


IMAGES = [s.image for s in synthetic_samples(4, seed=21)]


def test_a_validator_gets_the_miner_services_prediction(loop):
    loop["miner"].behaviour = "ok"; n0 = len(loop["miner"].seen)
    got = ask(loop, IMAGES)
    assert [a["status_code"] for a in got] == [200]*4, got
    want = [MinerStandIn.p_of(base64.b64encode(im).decode()) for im in IMAGES]
    assert [a["prediction"] for a in got] == pytest.approx(want)
    seen = loop["miner"].seen[n0:]
    assert {s["path"] for s in seen} == {"/v1/predict"} and {s["auth"] for s in seen} == {"Bearer s1c-test-key-123"}
    assert all(0 < s["body"]["deadline_s"] <= 8.0 for s in seen)      # the validator's 9 s less the margin
    assert loop["ax"].hotkey == loop["w"]["miner"]["hotkey"] and is_ss58(loop["ax"].hotkey)


def test_an_unknown_hotkey_gets_403_and_no_prediction(loop):
    n0 = len(loop["miner"].seen)
    got = ask(loop, IMAGES[:2], who="stranger")
    assert [(a["status_code"], a["prediction"]) for a in got] == [(403, -1.0)]*2
    assert "unregistered hotkey " + loop["w"]["stranger"]["hotkey"] in got[0]["status_message"]
    assert len(loop["miner"].seen) == n0            # refused before the miner service is asked
    assert loop["ax"].proc.poll() is None           # refused without raising: the axon still serves


def test_a_registered_non_validator_is_refused_by_default(loop):
    got = ask(loop, IMAGES[:1], who="member")
    assert (got[0]["status_code"], got[0]["prediction"]) == (403, -1.0)
    assert "no validator permit" in got[0]["status_message"]


def test_the_allowlist_is_read_again_when_it_changes(loop):
    "A validator taken off the list (as a metagraph sync would) is refused from the next request on."
    d, w = loop["d"], loop["w"]
    write_allowlist(d/"allow.json", [{"hotkey": w["member"]["hotkey"], "validator_permit": True, "stake": 10}])
    try:
        assert ask(loop, IMAGES[:1], who="validator")[0]["status_code"] == 403
        assert ask(loop, IMAGES[:1], who="member")[0]["status_code"] == 200
    finally:
        write_allowlist(d/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 50_000},
                                         {"hotkey": w["member"]["hotkey"], "validator_permit": False, "stake": 10}])


@pytest.mark.parametrize("behaviour,why", [("nan", "not a prediction in [0, 1]"), ("out_of_range", "not a prediction in [0, 1]"),
                                           ("422", "answered HTTP 422"), ("wrong_key", "answered HTTP 401")])
def test_an_invalid_or_refused_answer_becomes_the_fallback_loudly(loop, behaviour, why):
    miner = loop["miner"]
    if behaviour == "wrong_key": miner.key = "the service was given another key"
    else: miner.behaviour = behaviour
    try: got = ask(loop, IMAGES[:1])
    finally: miner.behaviour, miner.key = "ok", "s1c-test-key-123"
    assert (got[0]["status_code"], got[0]["prediction"]) == (200, 0.0)
    line = [l for l in ANSI.sub("", loop["ax"].log_text()).splitlines() if "FALLBACK ANSWER" in l][-1]
    assert "ERROR s1c.axon: FALLBACK ANSWER 0.0" in line and why in line, line


def test_a_miner_past_the_deadline_still_gives_a_valid_answer_in_time(loop):
    "The stand-in holds the request; the axon stops waiting a margin (1 s) before the 9 s and answers the fallback."
    loop["miner"].behaviour = "slow"; loop["miner"].release.clear()
    try: got = ask(loop, IMAGES[:1])
    finally: loop["miner"].behaviour = "ok"; loop["miner"].release.set()
    assert (got[0]["status_code"], got[0]["prediction"]) == (200, 0.0), got
    assert got[0]["process_time"] < 9.0
    assert "gave no answer: TimeoutError" in ANSI.sub("", loop["ax"].log_text()) or "timed out" in loop["ax"].log_text()


def test_an_unreachable_miner_service_gets_a_finite_answer_and_a_loud_log(env, tmp_path):
    w = make_test_wallets(tmp_path/"wallets", ["miner", "validator"], env)
    write_allowlist(tmp_path/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 1}])
    cfg = AxonConfig(str(tmp_path/"wallets"), "miner", str(tmp_path/"allow.json"), miner_url="http://127.0.0.1:9",
                     fallback_p=0.25)
    with launch_axon(cfg, env, tmp_path/"run") as ax:
        got = query_axon(ax, IMAGES[:1], tmp_path/"wallets", "validator", env=env)
    assert (got[0]["status_code"], got[0]["prediction"]) == (200, 0.25)
    log = ANSI.sub("", ax.log_text())
    assert "FALLBACK ANSWER 0.25" in log and "http://127.0.0.1:9/v1/predict gave no answer" in log
    assert '"fallback": 1' in log   # the counts printed at exit


def test_a_launch_that_fails_says_why(env, tmp_path):
    "A wallet folder without the hotkey is refused before the process starts; a busy port fails with the log."
    make_test_wallets(tmp_path/"wallets", ["miner"], env)
    write_allowlist(tmp_path/"allow.json", [])
    with pytest.raises(AxonError, match="no hotkey 'other'"):
        launch_axon(AxonConfig(str(tmp_path/"wallets"), "miner", str(tmp_path/"allow.json"), hotkey="other"), env)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        cfg = AxonConfig(str(tmp_path/"wallets"), "miner", str(tmp_path/"allow.json"), port=s.getsockname()[1])
        with pytest.raises(AxonError, match=f"(?s)the axon did not start.*log tail.*cannot listen on 127.0.0.1:{cfg.port}"):
            launch_axon(cfg, env, tmp_path/"run", timeout_s=90)


def test_ensure_axon_env_reuses_what_it_made(env):
    again = ensure_axon_env(env.path)
    assert (again.created, again.versions["bittensor"], again.versions["async-substrate-interface"]) == (False, "9.12.2", "1.5.12")
    assert again.versions["fastapi"] == "0.110.3" and again.versions["pydantic"] == "2.12.5"
    if env.path == default_axon_env_dir():   # `stage1-cascade axon --setup` reports the same environment
        r = subprocess.run([str(Path(sys.executable).with_name("stage1-cascade")), "axon", "--setup"],
                           capture_output=True, text=True, timeout=300)
        out = " ".join(ANSI.sub("", r.stdout).split())
        assert r.returncode == 0 and f"axon environment {env.path} (reused" in out and "bittensor 9.12.2" in out, out + r.stderr


def test_the_env_condition_is_read_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("S1C_MODELS_DIR", str(tmp_path/"models"))
    assert default_axon_env_dir() == tmp_path/"envs"/"axon"
    assert axon_env_missing().startswith(f"no axon environment at {tmp_path/'envs'/'axon'}")


def test_model_card_command_writes_the_card(tmp_path):
    hk = "5EqEdBt3DSNFHxjPe6kLjRSRbBUqbKf8RYVJHCEEc2ddXUnn"
    exe = Path(sys.executable).with_name("stage1-cascade")
    r = subprocess.run([str(exe), "model-card", "--hotkey", hk, "--out", str(tmp_path), "--version", "1.2.3"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    card = json.loads((tmp_path/"model_card.json").read_text())
    assert list(card) == ["model_name", "description", "version", "submitted_by", "submission_time"]
    assert (card["version"], card["submitted_by"]) == ("1.2.3", hk) and isinstance(card["submission_time"], int)
    assert card == {**model_card(hk, version="1.2.3", now=card["submission_time"])}
    bad = subprocess.run([str(exe), "model-card", "--hotkey", hk[:-1] + "m", "--out", str(tmp_path/"x.json")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "is not an ss58 address" in " ".join(ANSI.sub("", bad.stderr).split())
    assert not (tmp_path/"x.json").exists()


def test_the_readme_paragraph_matches_the_code():
    "The README's axon paragraph names the pinned bittensor and the command's real options."
    from stage1_cascade.cli import axon as axon_cmd
    import inspect
    from stage1_cascade.serve.axon import BITTENSOR_SPEC
    readme = (Path(__file__).resolve().parents[1]/"README.md").read_text()
    para = next(p for p in readme.split("\n\n") if p.startswith("The axon (`stage1-cascade axon`)"))
    assert f"bittensor {BITTENSOR_SPEC.split('==')[1]}" in para
    flags = {p.default.param_decls[0] for p in inspect.signature(axon_cmd).parameters.values()}
    assert set(re.findall(r"`(--[a-z-]+)", para)) <= flags and {"--allowlist", "--key-file", "--fallback-p"} <= flags


HANDLER_CHECK = r'''
import json, logging, sys
sys.path.insert(0, sys.argv[1])
import axon_server as s
cfg = json.loads(sys.argv[2]); out = {}
def syn(hotkey, dendrite=True):
    x = s.ImageSynapse(image="")
    if not dendrite: x.dendrite = None
    elif hotkey is not None: x.dendrite = s.bt.TerminalInfo(hotkey=hotkey)   # None: the default, no hotkey
    return x
h = s.Handlers(cfg)
for name, hk in cfg["who"].items(): out[name] = [*h.refuse(syn(hk)), h.priority(syn(hk))]
out["no dendrite"] = [*h.refuse(syn(None, dendrite=False)), h.priority(syn(None, dendrite=False))]
out["no hotkey"] = [*h.refuse(syn(None)), h.priority(syn(None))]
open(cfg["allowlist"], "w").write("{not json")          # a hand edit gone wrong: the last list is kept
out["validator after a bad edit"] = [*h.refuse(syn(cfg["who"]["validator"])), h.priority(syn(cfg["who"]["validator"]))]
open_door = s.Handlers({**cfg, "allowlist": cfg["good"], "force_validator_permit": False, "allow_non_registered": True})
out["stranger, door open"] = [*open_door.refuse(syn(cfg["who"]["stranger"])), open_door.priority(syn(cfg["who"]["stranger"]))]
try: s.AllowList(cfg["allowlist"]); out["bad at start"] = "accepted"
except SystemExit as e: out["bad at start"] = str(e)
print(json.dumps(out))
'''


def test_blacklist_and_priority_follow_the_subnets_miner(env, tmp_path):
    """The handlers themselves, in the axon environment, on the cases a real Dendrite cannot send (no
    dendrite at all, an empty hotkey): each is refused without raising; priority is the stake, 0 if unknown."""
    hk = {"validator": "5GYmopmV7r16ueSPdvpXGzJAu5LSzZW3qAoqYPwbDmGSxvPw", "member": "5EqEdBt3DSNFHxjPe6kLjRSRbBUqbKf8RYVJHCEEc2ddXUnn",
          "stranger": "5GCcKsQMsjszDXpo2BQDZ4dSkFxTC3xgW6avV4U5DaifSC7X", "empty": ""}   # hotkeys bittensor made here
    rows = [{"hotkey": hk["validator"], "validator_permit": True, "stake": 50_000}, {"hotkey": hk["member"], "stake": 10}]
    write_allowlist(tmp_path/"allow.json", rows); write_allowlist(tmp_path/"good.json", rows)
    cfg = {"allowlist": str(tmp_path/"allow.json"), "good": str(tmp_path/"good.json"), "miner_url": "http://127.0.0.1:9",
           "fallback_p": 0.0, "who": hk}
    scripts = Path(__import__("stage1_cascade").__file__).parent/"scripts"
    r = subprocess.run([str(env.python), "-c", HANDLER_CHECK, str(scripts), json.dumps(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["validator"] == [False, "hotkey recognized", 50000.0]
    assert got["member"] == [True, f"no validator permit: {hk['member']}", 10.0]
    assert got["stranger"] == [True, f"unregistered hotkey {hk['stranger']}", 0.0]
    assert got["empty"] == got["no dendrite"] == got["no hotkey"] == [True, "no dendrite hotkey", 0.0]
    assert got["validator after a bad edit"] == [False, "hotkey recognized", 50000.0]
    assert got["stranger, door open"] == [False, "hotkey recognized", 0.0]
    assert got["bad at start"].startswith(f"allow-list {tmp_path/'allow.json'} cannot be read: JSONDecodeError")
    assert "cannot be read (JSONDecodeError" in ANSI.sub("", r.stderr) and "keeping the last list read (2 hotkeys)" in r.stderr


def test_the_real_miner_service_answers_through_the_axon(env, tmp_path):
    """`stage1-cascade miner --stage1-only` as a real process behind the axon, its key in a file; skipped
    until the miner service (the miner part of issue 10) is on the branch."""
    pytest.importorskip("stage1_cascade.serve.miner", reason="the miner service is not on this branch yet")
    import secrets, signal, time
    (tmp_path/"key").write_text(secrets.token_urlsafe(32) + "\n")
    log = tmp_path/"miner.log"
    with open(log, "w") as lf:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("stage1-cascade")), "miner", "--port", "0", "--stage1-only",
                                 "--key-file", str(tmp_path/"key")], stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, t_end = None, time.monotonic() + 300
        while url is None and proc.poll() is None and time.monotonic() < t_end:
            m = re.search(r"listening on (http://\S+)", ANSI.sub("", log.read_text()))
            url = m[1] if m else time.sleep(0.2)
        assert url, f"the miner did not say where it listens:\n{log.read_text()[-2000:]}"
        w = make_test_wallets(tmp_path/"wallets", ["miner", "validator"], env)
        write_allowlist(tmp_path/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 1}])
        cfg = AxonConfig(str(tmp_path/"wallets"), "miner", str(tmp_path/"allow.json"), miner_url=url,
                         miner_key_file=str(tmp_path/"key"))
        with launch_axon(cfg, env, tmp_path/"run") as ax:
            got = query_axon(ax, IMAGES, tmp_path/"wallets", "validator", env=env)
        assert [a["status_code"] for a in got] == [200]*len(IMAGES), got
        assert all(0 <= a["prediction"] <= 1 for a in got) and "FALLBACK" not in ax.log_text(), ax.log_text()[-2000:]
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
