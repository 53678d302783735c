"""ragicl.integrations.langchain against the real langchain-core, MiniLM, FAISS and the SmolLM2 tokenizer."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain_core")

from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    FewShotPromptTemplate,
    PromptTemplate,
)
from langchain_core.runnables import RunnableLambda

from ragicl import BudgetError, ExampleIndex, Retriever, read_dataset
from ragicl.data import from_records
from ragicl.integrations.langchain import (
    RagiclExampleSelector,
    RagiclRetriever,
    example_to_document,
)

pytestmark = pytest.mark.slow
ROLES = {"human": "user", "ai": "assistant", "system": "system"}
QUERIES = ["a gripping , beautifully shot film with a terrific cast .",
           "the plot is thin and the jokes fall flat .",
           "an uneven but often touching portrait of a family in crisis ."]


@pytest.fixture(scope="module")
def sst2(sst2_train_path):
    return read_dataset(sst2_train_path).sample(200, seed=0)


@pytest.fixture(scope="module")
def index(sst2, minilm):
    return ExampleIndex.build(sst2, embedder=minilm)


def chat_tokens(tokenizer, messages) -> int:
    """Independent count: LangChain messages → chat template of the tokenizer → token ids."""
    dicts = [{"role": ROLES[m.type], "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_prompt(selector):
    few_shot = FewShotChatMessagePromptTemplate(
        example_selector=selector, input_variables=["input"],
        example_prompt=ChatPromptTemplate.from_messages([("human", "Review: {input}"), ("ai", "{output}")]))
    final = ChatPromptTemplate.from_messages(
        [("system", "Classify the sentiment of each review as positive or negative."), few_shot,
         ("human", "Review: {input}")])
    return selector.attach(final)


def test_chat_few_shot_prompt_fits_the_budget_tightly(index, smollm_tokenizer):
    budget = 300
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=32, max_tokens=budget)
    prompt = chat_prompt(selector)
    for query in QUERIES:
        messages = prompt.format_messages(input=query)
        n = chat_tokens(smollm_tokenizer, messages)
        assert n <= budget
        detail = selector.select_detailed({"input": query})
        assert detail.n_tokens == n
        assert len(messages) == 2 + 2 * len(detail.ids) and len(detail.ids) >= 3
        assert messages[-1].content == f"Review: {query}"
        # greedy packing: every candidate left out would not have fit in the remaining room
        by_id = {ex.id: ex for ex in index.examples}
        slack = budget - n
        assert detail.excluded and all(selector._cost(by_id[i]) > slack for i in detail.excluded)


def test_smaller_budget_selects_fewer_examples(index, smollm_tokenizer):
    counts = []
    for budget in (120, 400):
        selector = RagiclExampleSelector(index, smollm_tokenizer, k=32, max_tokens=budget)
        prompt = chat_prompt(selector)
        messages = prompt.format_messages(input=QUERIES[0])
        assert chat_tokens(smollm_tokenizer, messages) <= budget
        counts.append(len(messages))
    assert counts[0] < counts[1]


def test_string_few_shot_prompt_counts_prefix_and_suffix(index, smollm_tokenizer):
    budget = 160
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=8, max_tokens=budget, input_keys="review",
                                     output_key="sentiment")
    prompt = selector.attach(FewShotPromptTemplate(
        example_selector=selector, prefix="Classify the sentiment of each movie review.",
        example_prompt=PromptTemplate.from_template("Review: {review}\nSentiment: {sentiment}"),
        suffix="Review: {review}\nSentiment:", input_variables=["review"]))
    query = QUERIES[1]
    text = prompt.format(review=query)
    assert len(smollm_tokenizer(text)["input_ids"]) <= budget
    assert text.startswith("Classify the sentiment") and text.endswith(f"Review: {query}\nSentiment:")
    blocks = text.split("\n\n")[1:-1]
    assert blocks and all(b.split("\nSentiment: ")[1] in {"positive", "negative"} for b in blocks)
    # most relevant example last, next to the query
    top = Retriever(k=1).retrieve(index, [query])[0].positions[0]
    assert blocks[-1].startswith(f"Review: {index.examples[top].inputs['text']}\n")
    # without the prefix/suffix overhead the same budget holds more examples
    loose = RagiclExampleSelector(index, smollm_tokenizer, k=8, max_tokens=budget, input_keys="review",
                                  output_key="sentiment",
                                  example_prompt=PromptTemplate.from_template("Review: {review}\nSentiment: "
                                                                              "{sentiment}"))
    assert len(loose.select_examples({"review": query})) > len(blocks)


def test_query_taken_from_the_index_never_selects_itself(index, smollm_tokenizer):
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=4, max_tokens=400)
    chat_prompt(selector)
    own = index.examples[5]
    detail = selector.select_detailed({"input": own.inputs["text"]})
    assert own.id not in detail.ids and own.id not in detail.excluded
    assert all(e["input"] != own.inputs["text"] for e in detail.examples)
    assert len(detail.ids) == 4  # k caps the count even when more would fit


def test_async_variants_match_sync(index, smollm_tokenizer):
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=16, max_tokens=250)
    prompt = chat_prompt(selector)
    sync = selector.select_examples({"input": QUERIES[2]})
    assert asyncio.run(selector.aselect_examples({"input": QUERIES[2]})) == sync
    messages = asyncio.run(prompt.aformat_messages(input=QUERIES[2]))
    assert chat_tokens(smollm_tokenizer, messages) <= 250
    assert messages == prompt.format_messages(input=QUERIES[2])


def test_prompt_alone_over_budget_raises(index, smollm_tokenizer):
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=4, max_tokens=20)
    prompt = chat_prompt(selector)
    with pytest.raises(BudgetError, match="max_tokens=20"):
        prompt.format_messages(input=QUERIES[0])


def test_add_example_goes_into_the_index(minilm, smollm_tokenizer):
    small = ExampleIndex.build(from_records([{"text": t, "label": lab} for t, lab in [
        ("a wonderful , moving film", "positive"), ("a tedious mess", "negative"),
        ("sharp writing and great acting", "positive"), ("boring and far too long", "negative")]]),
        embedder=minilm)
    selector = RagiclExampleSelector(small, smollm_tokenizer, k=2, max_tokens=200,
                                     example_prompt=PromptTemplate.from_template("{input} -> {output}"))
    new_id = selector.add_example({"input": "the soundtrack of this thriller is haunting",
                                   "output": "positive"})
    assert len(small) == 5 and small.examples[-1].id == new_id and small.examples[-1].label == "positive"
    picked = asyncio.run(selector.aselect_examples({"input": "a haunting thriller soundtrack"}))
    assert picked[-1] == {"input": "the soundtrack of this thriller is haunting", "output": "positive"}
    asyncio.run(selector.aadd_example({"input": "dreadful acting", "output": "negative"}))
    assert len(small) == 6
    with pytest.raises(ValueError, match="none of the index's labels"):
        selector.add_example({"input": "meh", "output": "neutral"})


def test_retriever_returns_documents_and_composes_in_lcel(index):
    retriever = RagiclRetriever(index=index, k=5)
    docs = retriever.invoke(QUERIES[0])
    assert len(docs) == 5
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    top = Retriever(k=5).retrieve(index, [QUERIES[0]])[0]
    assert [d.metadata["id"] for d in docs] == [index.examples[p].id for p in top.positions]
    first = index.examples[top.positions[0]]
    assert docs[0].page_content == first.inputs["text"] == docs[0].metadata["text"]
    assert docs[0].metadata["label"] == first.label
    chain = retriever | RunnableLambda(lambda ds: [d.metadata["label"] for d in ds])
    assert chain.invoke(QUERIES[0]) == [d.metadata["label"] for d in docs]
    assert asyncio.run(retriever.ainvoke(QUERIES[0])) == docs
    with pytest.raises(ValueError):
        RagiclRetriever(index=index, k=0)


def test_example_to_document_for_generation_examples():
    from ragicl import Example

    doc = example_to_document(Example("q1", {"question": "2+2?"}, output="4"))
    assert doc.page_content == "2+2?" and doc.metadata == {"question": "2+2?", "id": "q1", "output": "4"}


def test_forgetting_attach_warns_when_the_prompt_overflows(index, smollm_tokenizer):
    from ragicl.integrations.langchain import PromptOverBudgetWarning

    example_prompt = PromptTemplate.from_template("Review: {input}\nSentiment: {output}")
    selector = RagiclExampleSelector(index, smollm_tokenizer, k=8, max_tokens=120,
                                     example_prompt=example_prompt)
    prompt = FewShotPromptTemplate(example_selector=selector, example_prompt=example_prompt,
                                   prefix="Classify the sentiment of each review.",
                                   suffix="Review: {input}\nSentiment:", input_variables=["input"])
    long_query = " ".join(QUERIES * 3)
    with pytest.warns(PromptOverBudgetWarning, match=r"> max_tokens=120.*attach\(prompt\)") as caught:
        text = prompt.format(input=long_query)
    n_tokens = len(smollm_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 120  # the warning was right: the rendered prompt is over budget
    measured = int(str(caught[0].message).split("at least ")[1].split(" ")[0])
    assert measured <= n_tokens  # a lower bound on the real prompt
    selector.attach(prompt)  # attached: the whole prompt is bounded, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptOverBudgetWarning)
        text = prompt.format(input=QUERIES[0])
    assert len(smollm_tokenizer(text, add_special_tokens=False)["input_ids"]) <= 120


def test_retriever_honors_k_per_call(index):
    retriever = RagiclRetriever(index=index, k=5)
    docs = retriever.invoke(QUERIES[0], k=1)
    assert len(docs) == 1 and docs[0] == retriever.invoke(QUERIES[0])[0]
    assert len(asyncio.run(retriever.ainvoke(QUERIES[0], k=2))) == 2
    assert len(retriever.invoke(QUERIES[0])) == 5  # the field is unchanged
    assert len(retriever.invoke(QUERIES[0], selection="balanced", k=3)) == 3
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.invoke(QUERIES[0], k=0)
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['top_k'\]"):
        retriever.invoke(QUERIES[0], top_k=2)


def test_strategy_is_a_deprecated_alias_of_selection(index):
    """``selection`` names how documents are chosen (as for Retriever and the estimators); the former
    ``strategy`` (field and per-call keyword) still works and raises a DeprecationWarning."""
    new = RagiclRetriever(index=index, k=4, selection="mmr")
    with pytest.warns(DeprecationWarning, match="use selection="):
        old = RagiclRetriever(index=index, k=4, strategy="mmr")
    assert old.selection == old.strategy == "mmr"
    assert [d.id for d in old.invoke(QUERIES[1])] == [d.id for d in new.invoke(QUERIES[1])]
    with pytest.warns(DeprecationWarning, match="use selection="):
        per_call = new.invoke(QUERIES[1], strategy="balanced", k=3)
    assert [d.id for d in per_call] == [d.id for d in new.invoke(QUERIES[1], selection="balanced", k=3)]
    with pytest.raises(ValueError, match="valid:"):
        RagiclRetriever(index=index, selection="nearest")


def test_selector_budget_and_verbalizer_come_from_the_packer_and_template(index, smollm_tokenizer):
    """The selector's greedy budget choice is prompt.pack.greedy_select over its exact per-example costs,
    and its label words are prompt.template.verbalize's."""
    from ragicl.prompt.pack import greedy_select
    from ragicl.prompt.retrieve import Retriever
    from ragicl.prompt.template import verbalize

    example_prompt = PromptTemplate.from_template("Review: {input}\nSentiment: {output}")
    words = {"positive": "great", "negative": "awful"}
    selector = RagiclExampleSelector(index, smollm_tokenizer, example_prompt=example_prompt, k=5,
                                     max_tokens=150, verbalizer=words)
    chosen = selector.select_detailed({"input": QUERIES[0]})
    found = Retriever(k=5).retrieve(index, [{"text": QUERIES[0]}], n_candidates=10)[0].positions
    costs = {p: len(smollm_tokenizer("\n\n" + example_prompt.format(
        input=index.examples[p].inputs["text"], output=verbalize(index.examples[p].label, words)),
        add_special_tokens=False)["input_ids"]) for p in found}
    picked, left = greedy_select(list(found), costs, 150, 5)
    assert chosen.ids == tuple(index.examples[p].id for p in reversed(picked))
    assert chosen.excluded == tuple(index.examples[p].id for p in left)
    assert chosen.n_tokens == sum(costs[p] for p in picked)
    assert {e["output"] for e in chosen.examples} <= {"great", "awful"}
