"""The retrieve-and-pack step's packer factory: one fit per index, tokenizer, template and budget."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from ragicl.data import from_records
from ragicl.index.core import ExampleIndex
from ragicl.prompt import step as step_module
from ragicl.prompt.step import make_packer
from ragicl.prompt.template import PromptTemplate


def _index() -> ExampleIndex:
    rows = [{"text": t, "label": lab} for t, lab in [("good film", "pos"), ("great fun", "pos"),
                                                     ("bad film", "neg"), ("dull plot", "neg")]]
    return ExampleIndex.build(from_records(rows), embedder="hash-32")


def test_one_fit_per_index_and_setting(smollm_tokenizer):
    lm = SimpleNamespace(tokenizer=smollm_tokenizer, context_length=2048)
    tpl = PromptTemplate()
    index = _index()
    fits = []
    original = step_module.Packer.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(1)
        return original(self, *args, **kwargs)

    step_module.Packer.fit = counting_fit
    try:
        first = make_packer(lm, tpl, index.examples, max_prompt_tokens=64, labels=index.labels, index=index)
        again = make_packer(lm, tpl, list(index.examples), max_prompt_tokens=64, labels=index.labels, index=index)
        assert again is first and len(fits) == 1  # the same setting: no second tokenization of the pool
        other = make_packer(lm, tpl, index.examples, max_prompt_tokens=128, labels=index.labels, index=index)
        assert other is not first and len(fits) == 2  # another budget: its own fit
        plain = make_packer(lm, tpl, index.examples, max_prompt_tokens=64, labels=index.labels)
        assert plain is not first and len(fits) == 3  # no index: nothing kept
        index.add(from_records([{"id": "new-1", "text": "awful", "label": "neg"}]))
        grown = make_packer(lm, tpl, index.examples, max_prompt_tokens=64, labels=index.labels, index=index)
        assert grown is not first and len(fits) == 4  # the index changed: a fresh fit over 5 examples
        assert grown.pack({"text": "so bad"}, [4]).included == (index.examples[4].id,)
    finally:
        step_module.Packer.fit = original
    n_before = len(step_module._PACKERS)
    del index, first, again, other, grown
    gc.collect()
    assert len(step_module._PACKERS) == n_before - 1  # the cache does not keep an index alive
