"""The server LM on the wire formats of servers that need a GPU (vLLM, SGLang) or a key (OpenAI chat).

Parsers are checked on documented response shapes (tests/fixtures/servers/*.json); the whole client (probe,
route choice, token-id prompts, scoring) runs against emulators that answer in those formats with numbers
computed by the real SmolLM2 (``tests/_fake_servers.py``), so scores must equal ``TransformersLM``'s up to
float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _fake_servers import Emulator

from ragicl.lm._http import ServerError
from ragicl.lm._routes import (
    echo_logprobs,
    parse_chat_top_logprobs,
    parse_prompt_logprobs,
    parse_top_logprobs,
    token_id_key,
)
from ragicl.lm.openai import OpenAICompatibleLM

pytest.importorskip("httpx")
FIXTURES = Path(__file__).with_name("fixtures") / "servers"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# ---------------------------------------------------------------- parsers on documented responses
def test_parse_vllm_prompt_logprobs():
    got = parse_prompt_logprobs(fixture("vllm_completion_prompt_logprobs.json"), [9906, 11, 1917, 0])
    assert got == [None, -2.3158, -4.0741, -0.9047]  # the prompt's own tokens, not the top-ranked ones
    with pytest.raises(ServerError, match="for 4 tokens; 3 were sent"):
        parse_prompt_logprobs(fixture("vllm_completion_prompt_logprobs.json"), [9906, 11, 1917])
    with pytest.raises(ServerError, match="lack the prompt's own token"):
        parse_prompt_logprobs(fixture("vllm_completion_prompt_logprobs.json"), [9906, 11, 1917, 5])


def test_parse_vllm_token_id_keys():
    top = parse_top_logprobs(fixture("vllm_completion_top_logprobs_token_ids.json"))
    assert {token_id_key(k) for k in top} == {6928, 8389, 21277}


def test_parse_sglang_echo():
    tokens, values = echo_logprobs(fixture("sglang_completion_echo.json"))
    assert tokens[2] == " positive" and values[:3] == [None, -0.0211, -0.4055]


def test_parse_openai_chat_top_logprobs():
    assert parse_chat_top_logprobs(fixture("openai_chat_top_logprobs.json")) == {"positive": -0.0009,
                                                                                  "negative": -7.1259}


# ---------------------------------------------------------------- whole client vs emulated servers
@pytest.fixture(scope="module")
def prompts(smollm_lm):
    tok = smollm_lm.tokenizer
    texts = ["Review: a gripping, beautifully shot film\nSentiment:", "Review: dull and far too long\nSentiment:",
             "Review: Критика: 映画は素晴らしい ☕\nSentiment:"]
    labels = [" positive", " negative", " very good indeed"]  # the last takes several tokens
    return ([tok(t)["input_ids"] for t in texts], [tok(w, add_special_tokens=False)["input_ids"] for w in labels])


def client(emulator: Emulator, **kwargs) -> OpenAICompatibleLM:
    return OpenAICompatibleLM("http://gpu-host:8000/v1", emulator.model, tokenizer=emulator.lm.tokenizer,
                              cache=False, transport=emulator.transport(), max_concurrency=1, **kwargs).load()


@pytest.mark.slow
def test_vllm_uses_prompt_logprobs_and_token_ids(smollm_lm, prompts):
    ids, labels = prompts
    emu = Emulator("vllm", smollm_lm)
    lm = client(emu)
    assert lm.active_route == "prompt_logprobs" and lm.profile.token_ids and lm.profile.token_id_keys
    assert lm.context_length == 8192 and lm.profile.tokenizer_agrees
    emu.requests.clear()
    got = lm.score_continuations(ids, labels)
    np.testing.assert_allclose(got, smollm_lm.score_continuations(ids, labels), atol=1e-4)
    sent = [body["prompt"] for path, body in emu.requests if path == "/v1/completions"]
    assert sent and all(isinstance(p, list) for p in sent)  # exactly the packer's token ids
    assert sent[0] == ids[0] + labels[0]


@pytest.mark.slow
def test_sglang_uses_checked_echo_over_text(smollm_lm, prompts):
    ids, labels = prompts
    lm = client(Emulator("sglang", smollm_lm))
    assert lm.active_route == "echo" and not lm.profile.token_ids
    assert not lm.profile.routes["prompt_logprobs"].ok
    np.testing.assert_allclose(lm.score_continuations(ids, labels), smollm_lm.score_continuations(ids, labels),
                               atol=1e-4)
    tl = lm.token_logprobs([ids[0]], [labels[2]])[0]  # the generation gap's teacher-forced log-probs
    np.testing.assert_allclose(tl, smollm_lm.token_logprobs([ids[0]], [labels[2]])[0], atol=1e-4)


def _check_top_n(got: np.ndarray, lm, ids, labels, n: int) -> None:
    """Labels among the server's top ``n`` next tokens score exactly; the others by an estimate that never
    ranks above a listed token."""
    exact = lm.score_continuations(ids, labels)
    nth = np.sort(lm.next_token_logprobs(ids), axis=1)[:, -n][:, None]
    listed = exact >= nth
    np.testing.assert_allclose(got[listed], exact[listed], atol=1e-4)
    assert (got[~listed] <= nth.repeat(len(labels), 1)[~listed] + 1e-4).all()


@pytest.mark.slow
def test_chat_only_server_scores_single_token_labels(smollm_lm, prompts):
    ids, labels = prompts
    lm = client(Emulator("openai-chat", smollm_lm), chat=True)
    assert lm.active_route == "chat"
    _check_top_n(lm.score_continuations(ids, labels[:2]), smollm_lm, ids, labels[:2], 20)  # OpenAI's cap
    with pytest.raises(ServerError, match="first generated token only"):
        lm.score_continuations(ids, labels)


@pytest.mark.slow
def test_top_logprobs_past_the_server_cap_is_an_estimate_and_counted(smollm_lm, prompts, caplog):
    ids, _ = prompts
    tok = smollm_lm.tokenizer
    words = [" apple", " zebra", " quantum", " positive", " negative", " the"]
    labels = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    emu = Emulator("vllm", smollm_lm, max_logprobs=5)
    lm = client(emu, route="top_logprobs", top_logprobs=5)
    got = lm.score_continuations(ids[:1], labels)
    assert lm.approximate_lookups > 0 and "outside the top" in caplog.text
    _check_top_n(got, smollm_lm, ids[:1], labels, 5)


def test_a_server_that_does_not_serve_the_model_is_a_clear_error(smollm_lm):
    emu = Emulator("vllm", smollm_lm, model="other/model")
    lm = OpenAICompatibleLM("http://gpu-host:8000/v1", "served-model", tokenizer=smollm_lm.tokenizer,
                            cache=False, transport=emu.transport())
    with pytest.raises(ServerError, match=r"does not serve 'served-model'; it serves \['other/model'\]"):
        lm.load()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleLM("localhost:8000", "m").client  # noqa: B018
    with pytest.raises(ValueError, match="route must be"):
        OpenAICompatibleLM("http://h/v1", "m", route="magic").client  # noqa: B018
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAICompatibleLM("http://h/v1", "m", max_concurrency=0).client  # noqa: B018
