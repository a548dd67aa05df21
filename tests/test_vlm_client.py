"Client-side logic of `stage1_cascade.vlm`: logprob reading, text parsing, retries and budgets (no server)."
import json, math, time

import httpx
import pytest
from PIL import Image

from stage1_cascade.vlm import (VLMBadResponse, VLMClient, VLMRequestError, VLMUnavailable, answer_from_response,
                                norm_token, p_from_top_logprobs, parse_answer_text, yes_no_probs)

IMG = Image.new("RGB", (64, 48), (30, 60, 90))


def _resp(top, content="Yes"):
    first = {"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": l} for t, l in top]}
    return {"model": "m", "choices": [{"message": {"role": "assistant", "content": content}, "logprobs": {"content": [first]}}]}


@pytest.mark.parametrize("tok,want", [("Yes", "yes"), (" yes", "yes"), ("ĠYES", "yes"), ("▁No", "no"), ("no.", "no"),
                                      ("\n No!", "no"), ("Nope", "nope"), ("", "")])
def test_norm_token(tok, want):
    assert norm_token(tok) == want


def test_variants_are_summed_and_normalised():
    py, pn = .3, .1
    top = [("Yes", math.log(py * .7)), (" yes", math.log(py * .2)), ("YES", math.log(py * .1)),
           ("No", math.log(pn * .5)), ("ĠNo", math.log(pn * .5)), ("The", math.log(.6))]
    assert yes_no_probs(top) == pytest.approx((py, pn))
    assert p_from_top_logprobs(top) == pytest.approx(py / (py + pn))
    # only the first spelling would give a different (wrong) answer: the variants matter here
    assert p_from_top_logprobs(top[:1] + top[3:4]) != pytest.approx(py / (py + pn), abs=1e-3)


def test_duplicate_tokens_counted_once():
    top = [{"token": "Yes", "logprob": math.log(.5)}, {"token": "Yes", "logprob": math.log(.5)}, {"token": "No", "logprob": math.log(.5)}]
    assert p_from_top_logprobs(top) == pytest.approx(.5)


def test_no_yes_no_gives_none_and_neg_inf_is_zero():
    assert p_from_top_logprobs([("The", -.1), ("A", -3.0)]) is None
    assert p_from_top_logprobs([("Yes", -math.inf), ("No", -1.0)]) == 0.0
    with pytest.raises(VLMBadResponse, match="not a number"):
        p_from_top_logprobs([("Yes", float("nan"))])


@pytest.mark.parametrize("text,want", [("Yes", .9), ("yes.", .9), ("Yes, there is roadwork ahead", .9), ("NO", .1),
                                       ("No, the road is clear", .1), ("I think yes", .9), ("There is no roadwork", .1),
                                       ("Nope", .1), ("**Yes**", .9)])
def test_parse_answer_text(text, want):
    assert parse_answer_text(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["", "Banana purple seventeen", "lorem ipsum", "<|im_end|>", "maybe yes maybe no", "42"])
def test_parse_answer_text_garbage(text):
    with pytest.raises(VLMBadResponse, match="cannot read a yes/no"):
        parse_answer_text(text)


def test_answer_from_response_prefers_logprobs_then_text():
    p, text, src, mass = answer_from_response(_resp([("No", math.log(.8)), ("Yes", math.log(.2))], "No"))
    assert (round(p, 6), src, round(mass, 6)) == (.2, "logprobs", 1.0)
    # logprobs present but no yes/no among them: the text decides
    p, _, src, _ = answer_from_response(_resp([("Sure", -.1)], "Yes, cones"))
    assert (p, src) == (.9, "text")
    with pytest.raises(VLMBadResponse):
        answer_from_response({"choices": []})
    with pytest.raises(VLMBadResponse):
        answer_from_response("not a dict")


class Script:
    "An httpx transport that answers from a list of (status | exception) and records requests."
    def __init__(self, *steps, body=None):
        self.steps, self.calls, self.body = list(steps), [], body or _resp([("Yes", math.log(.75)), ("No", math.log(.25))])
    def __call__(self, req):
        self.calls.append(req)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception): raise step
        if step == 200: return httpx.Response(200, json=self.body)
        return httpx.Response(step, json={"error": {"message": f"scripted {step}", "type": "X", "param": None, "code": step}})


def _client(script, **kw):
    kw.setdefault("backoff_s", 0.001)
    return VLMClient("http://mock/v1", "m", transport=httpx.MockTransport(script), **kw)


def test_request_body_shape():
    s = Script()
    a = _client(s, top_logprobs=7).p_roadwork(IMG)
    body = json.loads(s.calls[0].content)
    assert s.calls[0].url.path == "/v1/chat/completions"
    assert body["max_completion_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
    assert body["top_logprobs"] == 7 and body["model"] == "m"
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/") and "Yes or No" in parts[1]["text"]
    assert a.p == pytest.approx(.75) and a.source == "logprobs" and a.attempts == 1


@pytest.mark.parametrize("failures", [[500], [502, 503], [httpx.ConnectError("refused")], [httpx.RemoteProtocolError("dropped")],
                                      [httpx.ReadError("reset"), 504]])
def test_retries_then_success(failures):
    s = Script(*failures)
    a = _client(s, max_retries=2).p_roadwork(IMG)
    assert a.attempts == len(failures) + 1 == len(s.calls)


def test_retries_exhausted_is_unavailable():
    s = Script(500, 500, 500, 500)
    with pytest.raises(VLMUnavailable, match="after 3 attempt") as e:
        _client(s, max_retries=2).p_roadwork(IMG)
    assert e.value.attempts == 3 and "HTTP 500: scripted 500" in e.value.last_error and len(s.calls) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_4xx_not_retried(status):
    s = Script(status)
    with pytest.raises(VLMRequestError, match=f"HTTP {status}: scripted {status}") as e:
        _client(s, max_retries=3).p_roadwork(IMG)
    assert e.value.status_code == status and len(s.calls) == 1


def test_non_json_body_is_bad_response():
    c = VLMClient("http://mock", "m", transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>oops</html>")))
    with pytest.raises(VLMBadResponse, match="not JSON"):
        c.p_roadwork(IMG)


def test_budget_bounds_backoff():
    "Backoff sleeps never run past the call's time budget."
    s = Script(*[500] * 50)
    c = _client(s, max_retries=40, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(VLMUnavailable):
        c.p_roadwork(IMG, timeout_s=0.3)
    elapsed = time.monotonic() - t0
    # 40 backoffs of at least 0.05 s would take 2 s or more; the budget stops them near 0.3 s (loose: a loaded machine)
    assert elapsed < 1.5, elapsed
    assert 2 <= len(s.calls) < 41


def test_zero_budget_makes_no_attempt():
    s = Script()
    with pytest.raises(VLMUnavailable, match="no attempt made"):
        _client(s).p_roadwork(IMG, timeout_s=0)
    assert s.calls == []


@pytest.mark.parametrize("kw,msg", [({"top_logprobs": 0}, "top_logprobs=0"), ({"top_logprobs": 21}, "allowed 1..20"),
                                    ({"max_retries": -1}, "max_retries=-1"), ({"timeout_s": 0}, "timeout_s=0")])
def test_client_argument_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        VLMClient("http://x", "m", **kw)
