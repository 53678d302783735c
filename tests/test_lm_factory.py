"""LMSpec / make_lm: one description of which LM runs on which engine (CLI, estimators, saved estimators)."""

from __future__ import annotations

import pytest

from ragicl.lm.factory import LMSpec, make_lm, spec_of
from ragicl.lm.hf import TransformersLM
from ragicl.lm.openai import OpenAICompatibleLM


def test_engine_auto_rule():
    assert LMSpec("SmolLM2-135M-Instruct").resolved_engine == "transformers"
    assert LMSpec("/models/qwen.Q4_K_M.GGUF").resolved_engine == "llama.cpp"
    assert LMSpec("Qwen/Qwen2.5-7B", url="http://h:8000/v1").resolved_engine == "server"
    assert LMSpec("SmolLM2-135M-Instruct", engine="llama.cpp").resolved_engine == "llama.cpp"


def test_build_constructs_without_loading():
    hf = LMSpec("SmolLM2-135M-Instruct", dtype="float32", attn_implementation="eager",
                model_kwargs='{"revision": "main"}').build()
    assert isinstance(hf, TransformersLM) and hf._model is None
    assert hf.attn_implementation == "eager" and hf.model_kwargs == {"revision": "main"}
    srv = LMSpec("m", url="http://h:8000/v1", concurrency=3, cache="off", route="top_logprobs").build()
    assert isinstance(srv, OpenAICompatibleLM) and srv._client is None
    assert (srv.max_concurrency, srv.cache, srv.route) == (3, False, "top_logprobs")
    assert LMSpec.from_json(spec_of(srv).to_json()) == spec_of(srv)
    assert spec_of(hf) is None  # saved by its name


def test_make_lm_passes_objects_through_and_builds_names():
    lm = TransformersLM("x")
    assert make_lm(lm) is lm
    built = make_lm("SmolLM2-135M-Instruct", device="cpu", batch_size=2)
    assert isinstance(built, TransformersLM) and (built.device, built.batch_size) == ("cpu", 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"engine": "vllm"}, "engine must be one of"),
    ({"engine": "server"}, "needs url="),
    ({"engine": "transformers", "url": "http://h/v1"}, "url= is for a server"),
    ({"model_kwargs": "{bad"}, "must be a JSON object"),
    ({"model_kwargs": "[1]"}, "must be a JSON object"),
])
def test_bad_specs_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMSpec("m", **kwargs)


def test_unknown_fields_in_saved_specs_are_refused():
    with pytest.raises(ValueError, match="unknown LM settings"):
        LMSpec.from_json({"model": "m", "api_key": "x"})
