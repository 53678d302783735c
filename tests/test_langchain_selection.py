"""The LangChain example selector with every search and selection of issue 39: the whole rendered prompt stays
within max_tokens (counted by SmolLM2's tokenizer) and the examples kept are the first of the retriever's
order that fit, on real SST-2 rows embedded by MiniLM."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("bm25s")

from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate

from ragicl import ExampleIndex, Retriever, read_dataset
from ragicl.integrations.langchain import RagiclExampleSelector


@pytest.fixture(scope="module")
def index(sst2_train_path, minilm):
    idx = ExampleIndex.build(read_dataset(sst2_train_path).sample(100, seed=2), embedder=minilm, device="cpu")
    idx.build_lexical()
    return idx


def _attach(selector):
    return selector.attach(FewShotPromptTemplate(
        example_selector=selector, prefix="Classify the sentiment.",
        example_prompt=PromptTemplate.from_template("Review: {input}\nSentiment: {output}"),
        suffix="Review: {input}\nSentiment:", input_variables=["input"]))


@pytest.mark.parametrize("options", [{"selection": "dpp"}, {"selection": "votek"}, {"search": "bm25"},
                                     {"search": "hybrid", "selection": "mmr"}])
def test_selector_options_fit_the_budget_in_the_retrievers_order(index, smollm_tokenizer, options):
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=4, max_tokens=150, **options)
    prompt = _attach(selector)
    query = "a warm , funny and moving film"
    detail = selector.select_detailed({"input": query})
    text = prompt.format(input=query)
    assert len(smollm_tokenizer(text)["input_ids"]) == detail.n_tokens <= 150
    order = Retriever(k=4, **options).retrieve(index, [{"text": query}], n_candidates=8)[0].positions
    ids = [index.examples[p].id for p in order]
    kept = list(reversed(detail.ids))  # most relevant first
    assert kept and kept == [i for i in ids if i in kept]
    assert set(detail.excluded) <= set(ids)


def test_retriever_and_shortcuts_are_not_mixed(index, smollm_tokenizer):
    with pytest.raises(ValueError, match="either a Retriever or the shortcut"):
        RagiclExampleSelector(index, smollm_tokenizer, retriever=Retriever(k=2), selection="dpp")
    with pytest.raises(ValueError, match="unknown search"):
        RagiclExampleSelector(index, smollm_tokenizer, search="sparse")
