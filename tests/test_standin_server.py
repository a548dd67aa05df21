"The vLLM stand-in over real HTTP: the official openai client, vLLM's answers to malformed bodies, the body cap, faults, metrics, concurrency, a killed process."
import base64, io, json, math, socket, threading, time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

from stage1_cascade.data import load_image
from stage1_cascade.standin.backends import orange_scorer
from stage1_cascade.standin.protocol import DEFAULT_MAX_BODY_BYTES
from stage1_cascade.standin.server import FaultConfig, StandinFleet, StandinServer, STANDIN_OWNER, metric_total, parse_metrics
from stage1_cascade.vlm import (ROADWORK_PROMPT, VLMBadResponse, VLMClient, VLMRequestError, VLMUnavailable, image_data_url,
                                image_jpeg_bytes, p_from_top_logprobs)

MODEL = "standin-test"


def scene(orange_px: int, seed: int = 0) -> Image.Image:
    "A grey street-ish image with an orange cone of about `orange_px` pixels."
    img = Image.new("RGB", (224, 224), (110 + seed, 115, 120))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 150, 224, 224], fill=(60, 60, 65))
    if orange_px:
        h = int(math.sqrt(2 * orange_px))
        d.polygon([(112 - h // 2, 200), (112 + h // 2, 200), (112, 200 - h)], fill=(250, 120, 10))
    return img


CONE, EMPTY = scene(1500), scene(0)


def served_p(img) -> float:
    "What the server's scorer sees: the JPEG as sent, decoded by the same loader."
    return orange_scorer(load_image(image_jpeg_bytes(img)))


@pytest.fixture(scope="module")
def srv():
    with StandinServer(orange_scorer, MODEL) as s:
        yield s


@pytest.fixture
def clean(srv):
    srv.set_faults(latency_s=0.0, jitter_s=0.0, error_rate=0.0, drop_rate=0.0, garbage_rate=0.0, seed=0, dead=False)
    yield srv
    srv.set_faults(latency_s=0.0, jitter_s=0.0, error_rate=0.0, drop_rate=0.0, garbage_rate=0.0, seed=0, dead=False)


def counts(srv):
    return httpx.get(srv.url + "/_admin/faults").json()["counts"]


def test_openai_client_unchanged(clean):
    oc = openai.OpenAI(base_url=clean.url + "/v1", api_key="not-needed", max_retries=0)
    assert [m.id for m in oc.models.list()] == [MODEL]
    assert oc.models.list().data[0].owned_by == STANDIN_OWNER
    r = oc.chat.completions.create(
        model=MODEL, max_completion_tokens=1, temperature=0, logprobs=True, top_logprobs=8,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}},
                                               {"type": "text", "text": ROADWORK_PROMPT}]}])
    ch = r.choices[0]
    assert ch.finish_reason == "length" and r.usage.completion_tokens == 1 and r.usage.prompt_tokens > 64
    first = ch.logprobs.content[0]
    assert first.token == ch.message.content == "Yes"
    assert len(first.top_logprobs) == 8 and first.top_logprobs[0].bytes == list(b"Yes")
    # the openai client's own objects go straight into our reader, and give back the scorer's p
    assert p_from_top_logprobs(first.top_logprobs) == pytest.approx(served_p(CONE), abs=1e-6)
    r0 = oc.chat.completions.create(model=MODEL, max_tokens=1, logprobs=True, top_logprobs=8, temperature=0,
                                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(EMPTY)}}]}])
    assert r0.choices[0].message.content == "No"
    assert p_from_top_logprobs(r0.choices[0].logprobs.content[0].top_logprobs) == pytest.approx(served_p(EMPTY), abs=1e-6)


def test_openai_client_errors_parse(clean):
    oc = openai.OpenAI(base_url=clean.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        oc.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "`gpt-9` does not exist" in str(e.value) and e.value.status_code == 404
    with pytest.raises(openai.BadRequestError, match="no image in the request"):
        oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "is there roadwork?"}])


def test_client_matches_scorer_and_health(clean):
    with clean.client() as c:
        assert c.health() and c.models() == [MODEL]
        for img in (CONE, EMPTY, scene(300, 5)):
            a = c.p_roadwork(img)
            assert a.source == "logprobs" and a.p == pytest.approx(served_p(img), abs=1e-6)
            assert a.yes_no_mass == pytest.approx(1.0, abs=1e-9) and a.model == MODEL


@pytest.mark.parametrize("body,status,needle", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,@@@"}}]}]}, 400, "invalid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}]}]}, 400, "must be a data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello world").decode()}}]}]}, 400, "cannot use the image"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]}, 400, "Unsupported chat content part type: 'audio'"),
    ({"messages": []}, 400, "no image in the request"),   # vLLM takes an empty list; the stand-in then has no image
    ({"messages": "hi"}, 400, "Input should be a valid list"),
    ({"model": "nope", "messages": []}, 404, "The model `nope` does not exist. Valid aliases: standin-test."),
    ({"top_logprobs": 5}, 400, "when using `top_logprobs`, `logprobs` must be set to true."),
    ({"logprobs": True, "top_logprobs": 21}, 400, "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"stream": True}, 400, "stream=true"),
    ({"max_completion_tokens": 0}, 400, "max_tokens must be at least 1, got 0."),
    ({"n": 0}, 400, "n must be at least 1, got 0."),
    ({"temperature": 2.5}, 400, "temperature must be in [0, 2], got 2.5."),
    ({"max_completion_tokens": 5000}, 400, "max_completion_tokens=5000 cannot be greater than max_model_len=4096"),
])
def test_bad_requests_vllm_error_shape(clean, body, status, needle):
    good = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}}]}]}
    r = httpx.post(clean.url + "/v1/chat/completions", json={**good, **body})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status and needle in err["message"]


def test_non_json_body_is_400(clean):
    r = httpx.post(clean.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "Bad Request" and err["param"] == "body.1"
    assert err["message"].startswith("1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error'")


# --- malformed bodies, answered as vLLM 0.33.0 answers them, on a connection that stays open ---

IMAGE_PART = {"type": "image_url", "image_url": {"url": image_data_url(CONE)}}
GOOD = {"model": MODEL, "messages": [{"role": "user", "content": [IMAGE_PART]}]}
JSON_CT = {"content-type": "application/json"}


def with_part(part) -> dict:
    return {**GOOD, "messages": [{"role": "user", "content": [part]}]}


def client_port(r: httpx.Response) -> int:
    "The local port of the connection that carried `r` (the same port = the same keep-alive connection)."
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


# (case, request kwargs for httpx, status, error type, param, text in the message); statuses, types and params as
# vLLM 0.33.0's request model and exception handlers give them for the same bodies
MALFORMED = [
    ("image_url is an int", {"json": with_part({"type": "image_url", "image_url": 5})}, 400, "BadRequestError", None,
     "1 validation error for ChatCompletionContentPartImageParam\nimage_url\n  Input should be a valid dictionary"),
    ("image_url is a list", {"json": with_part({"type": "image_url", "image_url": [image_data_url(CONE)]})}, 400, "BadRequestError", None,
     "image_url\n  Input should be a valid dictionary"),
    ("image_url without url", {"json": with_part({"type": "image_url", "image_url": {}})}, 400, "BadRequestError", None,
     "image_url.url\n  Field required"),
    ("content type text/plain", {"content": json.dumps(GOOD), "headers": {"content-type": "text/plain"}}, 400, "Bad Request", None,
     "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"),
    ("messages not a list", {"json": {**GOOD, "messages": "hi"}}, 400, "Bad Request", "body.messages", "'msg': 'Input should be a valid list'"),
    ("model not a string", {"json": {**GOOD, "model": 5}}, 400, "Bad Request", "body.model", "'msg': 'Input should be a valid string'"),
    ("logprobs not a bool", {"json": {**GOOD, "logprobs": 2}}, 400, "Bad Request", "body.logprobs", "'type': 'bool_parsing'"),
    ("max_tokens 1.5", {"json": {**GOOD, "max_tokens": 1.5}}, 400, "Bad Request", "body.max_tokens", "'type': 'int_from_float'"),
    ("n=16 with greedy sampling", {"json": {**GOOD, "n": 16, "temperature": 0}}, 400, "BadRequestError", None,
     "n must be 1 when using greedy sampling, got 16."),
    ("body is a JSON list", {"json": [GOOD]}, 400, "Bad Request", "body", "Input should be a valid dictionary"),
    ("unknown model", {"json": {**GOOD, "model": "gpt-9"}}, 404, "NotFoundError", "model",
     f"The model `gpt-9` does not exist. Valid aliases: {MODEL}."),
]


@pytest.mark.parametrize("case,kw,status,etype,param,needle", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_body_gets_vllm_envelope_on_open_connection(clean, case, kw, status, etype, param, needle):
    with httpx.Client(base_url=clean.url) as h:
        before = h.post("/v1/chat/completions", json=GOOD)
        r = h.post("/v1/chat/completions", **kw)
        after = h.post("/v1/chat/completions", json=GOOD)
        ports = [client_port(x) for x in (before, r, after)]
    body = r.json()
    assert r.status_code == status and set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == (etype, param, status) and needle in err["message"]
    assert before.status_code == after.status_code == 200
    assert ports[0] == ports[1] == ports[2]   # one keep-alive connection, never reset


@pytest.mark.parametrize("extra,check", [
    ({"max_tokens": "5"}, lambda j: j["choices"][0]["finish_reason"] == "stop"),     # read as 5, as pydantic's lax int does
    ({"max_tokens": "1"}, lambda j: j["choices"][0]["finish_reason"] == "length"),   # read as 1: the one-token budget ends it
    ({"max_tokens": 1.0}, lambda j: j["choices"][0]["finish_reason"] == "length"),
    ({"n": 16}, lambda j: [c["index"] for c in j["choices"]] == list(range(16))),  # no cap of 8: vLLM allows up to 16384
    ({"model": None}, lambda j: j["model"] == MODEL),                              # no model: the served one
    ({"logprobs": "yes", "top_logprobs": 2}, lambda j: len(j["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2),
], ids=["max_tokens '5'", "max_tokens '1'", "max_tokens 1.0", "n=16", "model missing", "logprobs 'yes'"])
def test_lax_values_accepted_as_vllm(clean, extra, check):
    body = {k: v for k, v in {**GOOD, **extra}.items() if v is not None}
    r = httpx.post(clean.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200 and check(r.json())


def test_completions_route_speaks_vllm_errors(clean):
    post = lambda body: httpx.post(clean.url + "/v1/completions", json=body)
    r = post({"model": MODEL, "prompt": "p", "logprobs": "x"})
    assert r.status_code == 400 and r.json()["error"] == {"message": "`logprobs` must be an integer. (parameter=logprobs, value=x)",
                                                          "type": "BadRequestError", "param": "logprobs", "code": 400}
    r = post({"model": MODEL})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post({"model": 7, "prompt": "p"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.model"


# --- the body cap ---

def _vm(pid: int, key: str) -> int:
    "A memory figure of process `pid` from /proc/<pid>/status, in bytes (VmRSS: now; VmHWM: peak)."
    return next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key + ":"))


def _big_body(n: int, chunk: int = 1 << 20):
    "A JSON chat body of exactly `n` bytes, produced chunk by chunk (the client never holds it)."
    head, tail = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "'.encode(), b'"}]}'
    yield head
    left, blk = n - len(head) - len(tail), b"A" * chunk
    while left > 0:
        yield blk[:min(chunk, left)]
        left -= chunk
    yield tail


def test_default_body_cap_answers_from_the_header(clean):
    "A Content-Length over the default cap gets its 413 while not one byte of the body has been sent."
    assert DEFAULT_MAX_BODY_BYTES > 4 * 64 * 2**20 // 3   # the base64 text of the largest image load_image takes fits under it
    with socket.create_connection(("127.0.0.1", clean.port), timeout=10) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {DEFAULT_MAX_BODY_BYTES + 1}\r\n\r\n".encode())   # headers only
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < int(raw.split(b"content-length: ")[1].split(b"\r\n")[0]):
            chunk = s.recv(65536)
            assert chunk, f"connection closed before the whole answer came: {raw!r}"
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    err = json.loads(body)["error"]
    assert head.startswith(b"HTTP/1.1 413 ") and err["code"] == 413 and f"cap of {DEFAULT_MAX_BODY_BYTES} bytes" in err["message"]


def test_body_cap_bounds_server_memory_and_keeps_connection():
    "100 MB bodies (declared, and chunked with no length) get 413; the server's peak RSS grows far less than 100 MB."
    cap, big = 8 * 2**20, 100 * 10**6
    with StandinServer("orange", MODEL, spawn=True, max_body_bytes=cap) as s, httpx.Client(base_url=s.url, timeout=60) as h:
        first = h.post("/v1/chat/completions", json=GOOD)   # warm up the request path before measuring
        assert first.status_code == 200
        for headers, bound in (({**JSON_CT, "content-length": str(big)}, cap // 2),   # refused from the header: never read
                               (JSON_CT, cap + 8 * 2**20)):                        # chunked: counted, refused at the cap
            Path(f"/proc/{s.pid}/clear_refs").write_text("5")   # the peak (VmHWM) starts again from the RSS now
            rss0 = _vm(s.pid, "VmRSS")
            r = h.post("/v1/chat/completions", content=_big_body(big), headers=headers)
            grew = _vm(s.pid, "VmHWM") - rss0
            err = r.json()["error"]
            assert r.status_code == 413 and (err["type"], err["code"], err["param"]) == (HTTPStatus(413).phrase, 413, None)
            assert "max_body_bytes" in err["message"]
            assert grew < bound < big / 4, f"peak RSS grew {grew / 2**20:.1f} MiB for a {big / 1e6:.0f} MB body"
            again = h.post("/v1/chat/completions", json=GOOD)
            assert again.status_code == 200 and client_port(again) == client_port(r) == client_port(first)


def test_n_and_max_tokens_stop(clean):
    body = {"model": MODEL, "n": 3, "max_tokens": 5, "logprobs": True, "top_logprobs": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}}]}]}
    j = httpx.post(clean.url + "/v1/chat/completions", json=body).json()
    assert [c["index"] for c in j["choices"]] == [0, 1, 2] and {c["finish_reason"] for c in j["choices"]} == {"stop"}
    assert j["usage"]["completion_tokens"] == 3


def test_completions_route_refuses_text_only_for_scorer(clean):
    r = httpx.post(clean.url + "/v1/completions", json={"model": MODEL, "prompt": "Is there roadwork?", "max_tokens": 1})
    assert r.status_code == 400 and "needs an image" in r.json()["error"]["message"]


def test_retries_on_500_then_succeeds(clean):
    clean.set_faults(error_rate=0.5, seed=7)
    before = counts(clean)
    with clean.client(max_retries=8, backoff_s=0.001) as c:
        answers = [c.p_roadwork(CONE) for _ in range(6)]
    after = counts(clean)
    assert all(a.p == pytest.approx(served_p(CONE), abs=1e-6) for a in answers)
    retries = sum(a.attempts - 1 for a in answers)
    assert retries > 0 and retries == after["error"] - before["error"]   # each retry met one injected 500


def test_timeout_is_unavailable_within_budget(clean):
    clean.set_faults(latency_s=3.0)
    with clean.client(max_retries=3) as c:
        t0 = time.monotonic()
        with pytest.raises(VLMUnavailable, match="timeout") as e:
            c.p_roadwork(CONE, timeout_s=0.4)
        assert time.monotonic() - t0 < 1.5       # the budget holds: the 3 s answer is not waited for
    assert e.value.attempts == 1


def test_dropped_connection(clean):
    clean.set_faults(drop_rate=1.0)
    before = counts(clean)
    with clean.client(max_retries=2, backoff_s=0.001) as c:
        with pytest.raises(VLMUnavailable, match="RemoteProtocolError|ReadError|Disconnected") as e:
            c.p_roadwork(CONE)
    assert e.value.attempts == 3 and counts(clean)["drop"] - before["drop"] == 3
    # a raw socket sees the connection closed with no status line at all
    clean.set_faults(drop_rate=1.0)
    body = httpx.Request("POST", clean.url + "/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}}]}]})
    with socket.create_connection(("127.0.0.1", clean.port), timeout=5) as s:
        raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body.read())}\r\n\r\n").encode() + body.read()
        s.sendall(raw)
        assert s.recv(1024) == b""
    # half the connections dropped: retries get through
    clean.set_faults(drop_rate=0.5, seed=3)
    with clean.client(max_retries=8, backoff_s=0.001) as c:
        assert all(c.p_roadwork(CONE).source == "logprobs" for _ in range(5))


def test_garbage_answer(clean):
    clean.set_faults(garbage_rate=1.0)
    with clean.client() as c:
        raw, _ = c.chat(CONE)
        assert raw["choices"][0]["logprobs"] is None
        with pytest.raises(VLMBadResponse, match="cannot read a yes/no"):
            c.p_roadwork(CONE)


def test_unreachable_port_fails_fast():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    with VLMClient(f"http://127.0.0.1:{port}", "m", max_retries=2, backoff_s=0.01) as c:
        t0 = time.monotonic()
        with pytest.raises(VLMUnavailable, match="ConnectError") as e:
            c.p_roadwork(CONE, timeout_s=5.0)
        assert time.monotonic() - t0 < 1.0 and e.value.attempts == 3
        assert not c.health()


def test_metrics_move(clean):
    m0 = parse_metrics(httpx.get(clean.url + "/metrics").text)
    with clean.client() as c:
        raws = [c.chat(img)[0] for img in (CONE, EMPTY, CONE)]
    m1 = parse_metrics(httpx.get(clean.url + "/metrics").text)
    d = lambda name: metric_total(m1, name) - metric_total(m0, name)
    assert d("vllm:request_success_total") == 3 and d("vllm:generation_tokens_total") == 3
    assert d("vllm:prompt_tokens_total") == sum(r["usage"]["prompt_tokens"] for r in raws)
    assert d("vllm:e2e_request_latency_seconds_count") == 3 and d("vllm:time_to_first_token_seconds_count") == 3
    lab = f'{{engine="0",finished_reason="length",model_name="{MODEL}"}}'
    assert m1["vllm:request_success_total" + lab] - m0.get("vllm:request_success_total" + lab, 0) == 3
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{engine="0",model_name="{MODEL}"}}' in m1


def test_concurrency_queue_and_gauges():
    "More parallel requests than max_num_seqs: all answered, some wait, and the gauges show it."
    def slow(img):
        time.sleep(0.15); return orange_scorer(img)
    with StandinServer(slow, "slow", max_num_seqs=2) as s, s.client(timeout_s=10) as c:
        seen, stop = [], threading.Event()
        def watch():
            while not stop.is_set():
                m = parse_metrics(httpx.get(s.url + "/metrics").text)
                seen.append((metric_total(m, "vllm:num_requests_running"), metric_total(m, "vllm:num_requests_waiting"),
                             metric_total(m, "vllm:kv_cache_usage_perc")))
                time.sleep(0.02)
        w = threading.Thread(target=watch); w.start()
        imgs = [scene(200 * i, i) for i in range(6)]
        with ThreadPoolExecutor(6) as ex: answers = list(ex.map(c.p_roadwork, imgs))
        stop.set(); w.join()
        assert [a.p for a in answers] == pytest.approx([served_p(i) for i in imgs], abs=1e-6)
        assert max(r for r, _, _ in seen) <= 2 and max(wt for _, wt, _ in seen) >= 1
        assert max(k for _, _, k in seen) > 0
        m = parse_metrics(httpx.get(s.url + "/metrics").text)
        assert metric_total(m, "vllm:num_requests_running") == 0 and metric_total(m, "vllm:num_requests_waiting") == 0
        assert metric_total(m, "vllm:request_queue_time_seconds_sum") > 0.1


def test_admin_faults_validation(clean):
    r = httpx.post(clean.url + "/_admin/faults", json={"error_rate": 2})
    assert r.status_code == 400 and "error_rate=2" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="unexpected keyword|bogus"):
        clean.set_faults(bogus=1)


def test_faults_from_settings_reproducible():
    f = FaultConfig(error_rate=0.3, garbage_rate=0.2, seed=11)
    def run():
        out = []
        with StandinServer(orange_scorer, "f", faults=f) as s, s.client(max_retries=0) as c:
            for _ in range(8):
                try: out.append(round(c.p_roadwork(CONE).p, 6))
                except VLMUnavailable: out.append("500")
                except VLMBadResponse: out.append("garbage")
        return out
    a, b = run(), run()
    assert a == b and "500" in a and "garbage" in a


def test_server_manager_tiers():
    with StandinFleet({"fast": orange_scorer, "power": lambda im: 1 - orange_scorer(im)}) as mgr:
        cs = mgr.clients()
        pf, pp = cs["fast"].p_roadwork(CONE).p, cs["power"].p_roadwork(CONE).p
        assert pf == pytest.approx(1 - pp, abs=1e-6) and mgr.urls["fast"] != mgr.urls["power"]
        assert cs["power"].models() == ["standin-power"]
    with pytest.raises(VLMUnavailable):
        cs["fast"].p_roadwork(CONE, timeout_s=0.5)


def test_spawned_server_killed_mid_run():
    with StandinServer("orange", "spawned", spawn=True) as s, s.client(max_retries=1, backoff_s=0.01) as c:
        assert c.p_roadwork(CONE).p == pytest.approx(served_p(CONE), abs=1e-6)
        s.kill()
        assert not s.alive
        t0 = time.monotonic()
        with pytest.raises(VLMUnavailable):
            c.p_roadwork(CONE, timeout_s=2.0)
        assert time.monotonic() - t0 < 2.5


def test_stop_frees_port():
    s = StandinServer(orange_scorer, "x").start(); url, port = s.url, s.port
    s.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=1)
    with StandinServer(orange_scorer, "y", port=port) as s2:   # the same port can be bound again
        assert s2.port == port and httpx.get(s2.url + "/health").status_code == 200


def test_async_client_parallel_and_faults(clean):
    import asyncio
    from stage1_cascade.vlm import AsyncVLMClient
    imgs = [scene(150 * i, i) for i in range(6)]

    async def main():
        async with AsyncVLMClient(clean.url, MODEL, max_retries=8, backoff_s=0.001) as ac:
            assert await ac.health() and await ac.models() == [MODEL]
            answers = await asyncio.gather(*(ac.p_roadwork(im) for im in imgs))
            clean.set_faults(error_rate=0.5, seed=5)
            faulted = await asyncio.gather(*(ac.p_roadwork(CONE) for _ in range(4)))
            clean.set_faults(error_rate=0.0, latency_s=3.0)
            try:
                await ac.p_roadwork(CONE, timeout_s=0.3)
            except VLMUnavailable as e:
                timed_out = e
            return answers, faulted, timed_out

    answers, faulted, timed_out = asyncio.run(main())
    assert [a.p for a in answers] == pytest.approx([served_p(i) for i in imgs], abs=1e-6)
    assert sum(a.attempts for a in faulted) > 4 and all(a.p == pytest.approx(served_p(CONE), abs=1e-6) for a in faulted)
    assert "timeout" in str(timed_out)


def test_response_fields_as_vllm(clean):
    "Field sets of vLLM 0.33.0's ChatCompletionResponse / choice / ChatMessage (empty tool_calls dropped) and ModelCard."
    body = {"model": MODEL, "max_completion_tokens": 1, "logprobs": True, "top_logprobs": 3,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}}]}]}
    r = httpx.post(clean.url + "/v1/chat/completions", json=body)
    j = r.json()
    assert set(j) == {"id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage", "prompt_logprobs",
                      "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics"}
    ch = j["choices"][0]
    assert set(ch) == {"index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids", "routed_experts", "weight_versions"}
    assert set(ch["message"]) == {"role", "content", "refusal", "annotations", "audio", "function_call", "reasoning"}
    assert set(ch["logprobs"]["content"][0]) == {"token", "logprob", "bytes", "top_logprobs"}
    assert set(j["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
    assert j["id"].startswith("chatcmpl-") and "stand-in" in r.headers["x-stage1-standin"]
    card = httpx.get(clean.url + "/v1/models").json()["data"][0]
    assert set(card) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    h = httpx.get(clean.url + "/health")
    assert h.status_code == 200 and h.content == b""
    m = parse_metrics(httpx.get(clean.url + "/metrics").text)
    for reason in ("stop", "length", "abort", "error", "repetition"):
        assert f'vllm:request_success_total{{engine="0",finished_reason="{reason}",model_name="{MODEL}"}}' in m
    assert m[f'vllm:engine_sleep_state{{engine="0",model_name="{MODEL}",sleep_state="awake"}}'] == 1.0


def test_top_logprobs_all_and_extra_body(clean):
    body = {"model": MODEL, "max_completion_tokens": 1, "logprobs": True, "top_logprobs": -1,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}}]}]}
    top = httpx.post(clean.url + "/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 8 and sum(math.exp(t["logprob"]) for t in top) == pytest.approx(1.0, abs=1e-6)
    with clean.client(extra_body={"logprob_token_ids": [1, 2]}) as c:
        assert c.request_body(CONE)["logprob_token_ids"] == [1, 2]
        assert c.p_roadwork(CONE).p == pytest.approx(served_p(CONE), abs=1e-6)   # unknown fields are ignored, as vLLM does


def test_failing_scorer_is_a_500_in_vllm_shape():
    def broken(img): raise RuntimeError("weights not loaded")
    def out_of_range(img): return 1.7
    for scorer, needle in ((broken, "weights not loaded"), (out_of_range, "p=1.7, outside")):
        with StandinServer(scorer, "broken") as s, s.client(max_retries=1, backoff_s=0.001) as c:
            r = httpx.post(s.url + "/v1/chat/completions", json=c.request_body(CONE) | {"model": "broken"})
            assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError" and needle in r.json()["error"]["message"]
            with pytest.raises(VLMUnavailable, match=needle) as e:
                c.p_roadwork(CONE)
            assert e.value.attempts == 2


def test_dead_engine(clean):
    clean.set_faults(dead=True)
    with clean.client(max_retries=1, backoff_s=0.001) as c:
        assert httpx.get(clean.url + "/health").status_code == 503 and not c.health()
        with pytest.raises(VLMUnavailable, match="HTTP 500: The server had an error"):
            c.p_roadwork(CONE)
    clean.set_faults(dead=False)
    with clean.client() as c:
        assert c.health() and c.p_roadwork(CONE).source == "logprobs"
    with pytest.raises(ValueError, match="dead='yes'"):
        clean.set_faults(dead="yes")


@pytest.mark.parametrize("kw,msg", [({"error_rate": 1.5}, "in \\[0, 1\\]"), ({"drop_rate": -.1}, ">= 0"),
                                    ({"error_rate": .6, "garbage_rate": .6}, "sum to 1.200"), ({"latency_s": float("inf")}, "finite")])
def test_fault_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FaultConfig(**kw)
