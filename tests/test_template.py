"""PromptTemplate: parsing the example format, rendering, verbalizing, validation errors, chat frame."""

from __future__ import annotations

import dataclasses

import pytest

from ragicl._exceptions import DataError
from ragicl.prompt.template import PromptTemplate
from ragicl.types import Dataset, Example


def test_render_query_example_and_answer():
    t = PromptTemplate("Review: {text}\nSentiment: {label}")
    ex = Example("3", {"text": "a joy", "extra": "unused"}, label="positive")
    assert t.render_query(ex) == "Review: a joy\nSentiment:"
    assert t.render_query({"text": "a joy"}) == "Review: a joy\nSentiment:"
    assert t.render_example(ex) == "Review: a joy\nSentiment: positive"
    assert t.lead == " "
    assert t.answer("positive") == " positive"
    assert t.render_query(ex) + t.answer("positive") == t.render_example(ex)
    assert t.target == "label" and t.input_fields == ("text",)


def test_lead_is_the_stripped_gap():
    assert PromptTemplate("Q: {text}\nA:{label}").lead == ""
    assert PromptTemplate("{text} =>   {label}").lead == "   "
    t = PromptTemplate("{text}\n{label}")
    assert t.lead == "" and t.render_query({"text": "x"}) == "x\n"


def test_verbalizer_default_and_mapping():
    t = PromptTemplate()
    assert t.verbalize("not_entailment") == "not entailment"
    assert t.answer("not_entailment") == " not entailment"
    v = PromptTemplate(verbalizer={"positive": "great", "negative": "terrible"})
    assert v.answer("positive") == " great"
    with pytest.raises(DataError, match="neutral"):
        v.verbalize("neutral")


def test_multi_field_and_literal_braces():
    t = PromptTemplate("{{P}} {premise} | {hypothesis}\nAnswer: {label}")
    ex = Example("1", {"premise": "A dog runs.", "hypothesis": "It moves."}, label="entailment")
    assert t.render_example(ex) == "{P} A dog runs. | It moves.\nAnswer: entailment"
    assert t.input_fields == ("premise", "hypothesis")


def test_user_braces_are_not_reparsed():
    t = PromptTemplate()
    assert t.render_query({"text": "{label} {0} }{"}) == "Review: {label} {0} }{\nSentiment:"


def test_generation_template():
    t = PromptTemplate.default(["question"], task="generation", output_field="answer")
    assert t.example == "Question: {question}\nAnswer: {output}"
    ex = Example("0", {"question": "2+2?"}, output="4")
    assert t.target == "output"
    assert t.render_example(ex) == "Question: 2+2?\nAnswer: 4"
    assert t.answer("4_x") == " 4_x"  # outputs are not verbalized


def test_default_from_fields_and_dataset():
    assert PromptTemplate.default(["premise", "hypothesis"]).example == (
        "Premise: {premise}\nHypothesis: {hypothesis}\nLabel: {label}")
    assert PromptTemplate.default(["text"]).example == "Text: {text}\nLabel: {label}"
    ds = Dataset((Example("0", {"question": "q"}, output="a"),), ("question",), task="generation",
                 output_field="answer")
    assert PromptTemplate.default(ds).example == "Question: {question}\nAnswer: {output}"
    assert PromptTemplate.default(["text"], instruction="Classify.").instruction == "Classify."
    with pytest.raises(TypeError):
        PromptTemplate.default("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        PromptTemplate.default(["text"], task="ranking")


def test_presets():
    assert "{premise}" in PromptTemplate.for_dataset("rte").example
    assert PromptTemplate.for_dataset("SST2").example.endswith("{label}")
    assert PromptTemplate.for_dataset("gsm8k").target == "output"
    with pytest.raises(ValueError, match="no preset"):
        PromptTemplate.for_dataset("imagenet")


def test_constructor_only_stores_and_is_frozen():
    t = PromptTemplate("no placeholders at all")  # no error until validated
    with pytest.raises(ValueError, match=r"\{label\}"):
        t.validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        PromptTemplate().separator = " "  # type: ignore[misc]


@pytest.mark.parametrize("fmt, message", [
    ("Review: {text}", r"does not end with \{label\}"),
    ("{label} then {text}", r"text after \{label\}"),
    ("Review: {text}\n{label}!", r"text after \{label\}"),
    ("Review: {}\n{label}", "named fields"),
    ("Review: {0}\n{label}", "named fields"),
    ("Review: {text!r}\n{label}", "format spec"),
    ("Review: {text:>10}\n{label}", "format spec"),
    ("Review: {text\n{label}", "not a valid format string"),
    ("Answer: {label}", "no input field"),
])
def test_malformed_formats(fmt, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(fmt).validate()


def test_validate_fields():
    t = PromptTemplate("Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}")
    t.validate(["premise", "hypothesis", "idx"])  # extra data fields are fine
    with pytest.raises(DataError, match=r"\{hypothesis\}.*\['premise', 'text'\]"):
        t.validate(["premise", "text"])


def test_missing_field_or_label_in_row():
    t = PromptTemplate("Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}")
    with pytest.raises(DataError, match=r"example 'row-7'.*'hypothesis'"):
        t.render_example(Example("row-7", {"premise": "p"}, label="entailment"))
    with pytest.raises(DataError, match="the query.*'premise'"):
        t.render_query({"hypothesis": "h"})
    with pytest.raises(DataError, match="'row-8' has no label"):
        t.render_example(Example("row-8", {"premise": "p", "hypothesis": "h"}))


def test_chat_frame_and_answer(smollm_tokenizer):
    t = PromptTemplate(chat=True, instruction="Classify the sentiment.")
    prefix, suffix, in_system = t.chat_frame(smollm_tokenizer)
    assert in_system and "Classify the sentiment." in prefix
    assert prefix.endswith("<|im_start|>user\n") and suffix.startswith("<|im_end|>")
    assert suffix.endswith("<|im_start|>assistant\n")
    assert t.answer("very_good") == "very good"  # the assistant turn starts with the label itself
    assert t.lead == ""
    ex = Example("0", {"text": "fun"}, label="positive")
    assert t.render_example(ex) == "Review: fun\nSentiment: positive"  # demonstrations keep the lead
    prefix, _, in_system = PromptTemplate(chat=True).chat_frame(smollm_tokenizer)
    assert not in_system and prefix.startswith("<|im_start|>system")  # the model's default system turn


def test_chat_frame_without_chat_template():
    class NoChat:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        PromptTemplate(chat=True).chat_frame(NoChat())
