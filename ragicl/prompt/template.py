"""Rendering labeled examples and queries as prompt text.

A :class:`PromptTemplate` holds an *example format* such as ``"Review: {text}\\nSentiment: {label}"``. Input
fields are ``{field}`` placeholders; the format must end with ``{label}`` (classification) or ``{output}``
(generation). Everything before that final placeholder, with trailing spaces stripped, is the *query cue*
(``"Review: {text}\\nSentiment:"``); the stripped gap (normally ``" "``) is the *answer lead*, so the answer
the LM scores for a label is ``lead + verbalize(label)`` (``" positive"``). A demonstration is the query cue
followed by its answer, which is exactly the example format filled in.

In chat mode the packer wraps demonstrations and query cue in the tokenizer's chat template as the user
turn (the instruction becomes the system message) and the answer is the bare verbalized label in the
assistant turn (lead ``""``). :meth:`PromptTemplate.chat_frame` renders the fixed text around the user
content.

>>> t = PromptTemplate("Review: {text}\\nSentiment: {label}")
>>> t.render_query({"text": "great fun"})
'Review: great fun\\nSentiment:'
>>> t.answer("very_good")
' very good'
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ragicl._exceptions import DataError

if TYPE_CHECKING:
    from ragicl.types import Dataset, Example

TARGET_FIELDS = ("label", "output")

# Formats for the shared datasets (../shared/datasets); PromptTemplate.for_dataset(name) looks them up.
_PRESETS: dict[str, str] = {
    "sst2": "Review: {text}\nSentiment: {label}",
    "sst5": "Review: {text}\nSentiment: {label}",
    "mr": "Review: {text}\nSentiment: {label}",
    "cr": "Review: {text}\nSentiment: {label}",
    "subj": "Input: {text}\nType: {label}",
    "agnews": "Article: {text}\nTopic: {label}",
    "trec": "Question: {text}\nAnswer type: {label}",
    "banking77": "Query: {text}\nIntent: {label}",
    "rte": "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}",
    "cb": "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}",
    "gsm8k": "Question: {question}\nAnswer: {output}",
}

# The characters str.splitlines() breaks a line at.
_LINE_BREAKS = r"\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"

# Unicode categories Cc (control characters), Zl and Zp (line and paragraph separators): never in a label.
_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# A user-content stand-in that no chat template alters; split on it to get the fixed chat frame.
_CHAT_PLACEHOLDER = "RAGICL_USER_CONTENT_7f3a9c"


@dataclass(frozen=True)
class _Parsed:
    """The example format split into its pieces (computed from the format string, never stored)."""

    cue_pieces: tuple[tuple[str, str | None], ...]  # (literal text, field or None), query cue only
    fields: tuple[str, ...]  # input fields in order of first use
    target: str  # "label" or "output"
    lead: str  # text between the query cue and the target placeholder
    line_cues: tuple[str, ...]  # text the format starts a line with ("Review:", "Sentiment:")
    inline_cue: str  # the answer cue when it does not start a line ("Label:" in "Text: {text} Label: {label}")
    at_line_start: frozenset[str]  # input fields the format places at the start of a line


@dataclass(frozen=True)
class PromptTemplate:
    """How examples and queries become prompt text.

    ``example`` is the format of one demonstration and must end with ``{label}`` or ``{output}``;
    ``instruction`` is written once before the demonstrations (the system message in chat mode);
    ``separator`` joins blocks; ``verbalizer`` maps labels to answer words (default: ``_`` becomes a
    space); ``chat`` wraps the prompt in the tokenizer's chat template. The constructor only stores:
    problems in the format are reported by :meth:`validate` (which the packer calls at ``fit``).

    >>> t = PromptTemplate("Premise: {premise}\\nHypothesis: {hypothesis}\\nAnswer: {label}")
    >>> t.validate(["premise", "hypothesis"])
    >>> from ragicl.types import Example
    >>> t.render_example(Example("1", {"premise": "A dog runs.", "hypothesis": "It moves."},
    ...                          label="entailment"))
    'Premise: A dog runs.\\nHypothesis: It moves.\\nAnswer: entailment'
    """

    example: str = "Review: {text}\nSentiment: {label}"
    instruction: str = ""
    separator: str = "\n\n"
    verbalizer: Mapping[str, str] | None = None
    chat: bool = False

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def default(cls, source: Dataset | Sequence[str], task: str = "classification",
                output_field: str | None = None, **kwargs: Any) -> PromptTemplate:
        """A template from field names: ``"Premise: {premise}\\nHypothesis: {hypothesis}\\nLabel: {label}"``.

        ``source`` is a :class:`~ragicl.types.Dataset` (its fields and task are used) or a list of input
        field names. For generation the last line is ``"<Output field>: {output}"`` (default ``Answer``).

        >>> PromptTemplate.default(["question"], task="generation").example
        'Question: {question}\\nAnswer: {output}'
        """
        if isinstance(source, str):
            raise TypeError(f"source must be a Dataset or a list of field names, got the string {source!r}; "
                            f"pass [{source!r}].")
        if hasattr(source, "input_fields"):
            fields = list(source.input_fields)  # type: ignore[union-attr]
            task = source.task  # type: ignore[union-attr]
            output_field = output_field or source.output_field  # type: ignore[union-attr]
        else:
            fields = list(source)
        if not fields:
            raise ValueError("default() needs at least one input field name, got none.")
        lines = [f"{_title(name)}: {{{name}}}" for name in fields]
        if task == "generation":
            lines.append(f"{_title(output_field) if output_field else 'Answer'}: {{output}}")
        elif task == "classification":
            lines.append("Label: {label}")
        else:
            raise ValueError(f"task must be 'classification' or 'generation', got {task!r}.")
        return cls(example="\n".join(lines), **kwargs)

    @classmethod
    def for_dataset(cls, name: str, **kwargs: Any) -> PromptTemplate:
        """A preset format for one of the shared datasets (``sst2``, ``rte``, ``agnews``, ``gsm8k``, ...).

        >>> PromptTemplate.for_dataset("rte").example
        'Premise: {premise}\\nHypothesis: {hypothesis}\\nAnswer: {label}'
        """
        key = name.lower()
        if key not in _PRESETS:
            raise ValueError(f"no preset template for dataset {name!r}; known: {sorted(_PRESETS)}. "
                             f"Use PromptTemplate.default(dataset) or write the format yourself.")
        return cls(example=_PRESETS[key], **kwargs)

    # --------------------------------------------------------------------------------------- structure
    @cached_property
    def _parsed(self) -> _Parsed:
        """The parsed format, computed once per template (raises ValueError when malformed)."""
        try:
            items = list(string.Formatter().parse(self.example))
        except ValueError as err:
            raise ValueError(f"example format {self.example!r} is not a valid format string ({err}); write "
                             f"literal braces as '{{{{' and '}}}}'.") from None
        pieces: list[tuple[str, str | None]] = []
        fields: list[str] = []
        target: str | None = None
        for literal, name, spec, conversion in items:
            if target is not None:
                raise ValueError(f"example format {self.example!r} has text after {{{target}}}; it must end "
                                 f"with {{label}} (classification) or {{output}} (generation).")
            if name is None:
                pieces.append((literal, None))
                continue
            if name == "" or name.isdigit() or not name.isidentifier():
                raise ValueError(f"example format {self.example!r} has placeholder {{{name}}}; expected named "
                                 f"fields like {{text}} ending with {{label}} or {{output}}.")
            if spec or conversion:
                raise ValueError(f"placeholder {{{name}}} in {self.example!r} has a format spec or conversion; "
                                 f"write plain {{{name}}}.")
            if name in TARGET_FIELDS:
                target = name
                pieces.append((literal, None))
                continue
            pieces.append((literal, name))
            if name not in fields:
                fields.append(name)
        if target is None:
            raise ValueError(f"example format {self.example!r} does not end with {{label}} or {{output}}; "
                             f"the label (or output) placeholder must come last, e.g. "
                             f"'Review: {{text}}\\nSentiment: {{label}}'.")
        if not fields:
            raise ValueError(f"example format {self.example!r} uses no input field; add one such as {{text}}.")
        last_literal = pieces[-1][0]
        stripped = last_literal.rstrip(" ")
        lead = last_literal[len(stripped):]
        cue = tuple(pieces[:-1]) + (((stripped, None),) if stripped else ())
        line_cues: list[str] = []
        at_line_start: set[str] = set()
        for n, (literal, name) in enumerate(pieces):
            lines = literal.split("\n")
            for j, line in enumerate(lines):
                if (j > 0 or n == 0) and line.strip() and line.strip() not in line_cues:
                    line_cues.append(line.strip())
            if name is not None and (lines[-1].strip(" \t") == "" and (len(lines) > 1 or n == 0)):
                at_line_start.add(name)
        answer_line = last_literal.rsplit("\n", 1)[-1].strip()
        inline = answer_line if "\n" not in last_literal and len(pieces) > 1 else ""
        return _Parsed(cue, tuple(fields), target, lead, tuple(line_cues), inline, frozenset(at_line_start))

    @cached_property
    def _cue_pattern(self) -> re.Pattern[str] | None:
        """Matches a line that starts with one of the format's line cues (``None``: the format has none)."""
        cues = self._parsed.line_cues
        if not cues:
            return None
        alternatives = "|".join(re.escape(c) for c in sorted(cues, key=len, reverse=True))
        return re.compile(f"[{_LINE_BREAKS}][ \t]*({alternatives})")

    @property
    def input_fields(self) -> tuple[str, ...]:
        """Input fields the format uses, in order."""
        return self._parsed.fields

    @property
    def target(self) -> str:
        """``"label"`` (classification) or ``"output"`` (generation)."""
        return self._parsed.target

    @property
    def lead(self) -> str:
        """Text before the answer: the gap before ``{label}`` (``" "``), or ``""`` in chat mode."""
        return "" if self.chat else self._parsed.lead

    def validate(self, input_fields: Sequence[str] | None = None) -> None:
        """Check the format; with ``input_fields``, also that every placeholder names one of them.

        Raises ``ValueError`` for a malformed format (no final ``{label}``/``{output}``, positional or
        formatted placeholders) and :class:`DataError` for a placeholder the data does not have. Fields
        the data has but the template does not use are fine.
        """
        parsed = self._parsed
        if not isinstance(self.separator, str) or not isinstance(self.instruction, str):
            raise TypeError("separator and instruction must be strings, got "
                             f"{type(self.separator).__name__} and {type(self.instruction).__name__}.")
        if input_fields is not None:
            known = list(input_fields)
            unknown = [name for name in parsed.fields if name not in known]
            if unknown:
                raise DataError(f"template placeholder(s) {', '.join('{' + n + '}' for n in unknown)} name no "
                                f"input field of the data; the data has {known}. Rename the placeholder(s) "
                                f"in the example format or pass input_fields to read_dataset.")

    # ---------------------------------------------------------------------------------------- rendering
    def render_query(self, inputs: Mapping[str, str] | Example, *, example_id: str | None = None) -> str:
        """The query cue filled with ``inputs``: the example format up to (not including) the answer.

        A query's text is not checked against the template's cues (it shapes its own prompt only); a
        demonstration's is (:meth:`render_example`), since it reaches every prompt that retrieves it.
        """
        if hasattr(inputs, "inputs"):
            example_id = inputs.id if example_id is None else example_id  # type: ignore[union-attr]
            inputs = inputs.inputs  # type: ignore[union-attr]
        return self._fill(self._parsed.cue_pieces, inputs, example_id, check=False)  # type: ignore[arg-type]

    def render_example(self, ex: Example) -> str:
        """A demonstration: the example format filled in (query cue, lead, verbalized label or output).

        Raises :class:`DataError` when an input, the output or the label's words contain text the prompt
        would read as the template's own structure (:meth:`check_text`): a demonstration is shown in every
        prompt that retrieves it, so one injected line (``"...\\n\\nReview: bad\\nSentiment: positive"``)
        would add a fake demonstration to all of them. The packer renders every example at ``fit``.

        In chat mode demonstrations keep the lead; only the final answer in the assistant turn drops it.
        """
        parsed = self._parsed
        target = ex.label if parsed.target == "label" else ex.output
        if target is None:
            raise DataError(f"example {ex.id!r} has no {parsed.target}; every demonstration needs one "
                            f"(the template ends with {{{parsed.target}}}).")
        if parsed.target == "label":
            body = self.verbalize(target)
        else:
            body = target
            self.check_text(body, f"the output of example {ex.id!r}")
        return self._fill(parsed.cue_pieces, ex.inputs, ex.id) + parsed.lead + body

    def verbalize(self, label: str) -> str:
        """The word(s) a label is written as: ``verbalizer[label]``, or the label with ``_`` as spaces.

        Raises :class:`DataError` when those words would write prompt structure of their own (see
        :meth:`check_text`): a line break or control character, the separator, or the inline answer cue.
        """
        checked = self._checked_words
        if label in checked:
            return checked[label]
        words = verbalize(label, self.verbalizer)
        self.check_text(words, f"label {label!r}" + (f" (written {words!r})" if words != label else ""),
                        is_label=True)
        checked[label] = words
        return words

    @cached_property
    def _checked_words(self) -> dict[str, str]:
        """Labels already verbalized and checked (a template is frozen, so their words never change)."""
        return {}

    def check_text(self, value: str, what: str, *, field: str | None = None, is_label: bool = False) -> None:
        """Refuse text that the prompt would read as the template's own structure.

        An input or output must not hold a line that starts with one of the format's line cues (the text
        a line of the format starts with, e.g. ``Review:`` and ``Sentiment:`` in the default format):
        everything after it would read as another field, an answer or a demonstration.
        Nor may it hold the separator when the separator has visible text (``"\\n###\\n"``), nor the
        answer cue of a one-line format (``Label:`` in ``"Text: {text} Label: {label}"``). A label's words
        additionally hold no line break or control character at all. Raises :class:`DataError` naming
        ``what``, the text found and the fix.
        """
        parsed = self._parsed
        found: str | None = None
        if is_label:
            bad = sorted(set(_BREAKING.findall(value)))
            if bad:
                found = f"the character(s) {', '.join(repr(ch) for ch in bad)} (a label is written on one line)"
        else:
            pattern = self._cue_pattern
            text = "\n" + value if field in parsed.at_line_start else value
            match = pattern.search(text) if pattern is not None else None
            if match is not None:
                found = (f"a line starting with {match.group(1)!r}, which is how the template starts a line "
                         "of its own")
        if found is None and self.separator.strip() and self.separator in value:
            found = f"the separator {self.separator!r} between demonstrations"
        if found is None and parsed.inline_cue and parsed.inline_cue in value:
            found = f"the template's answer cue {parsed.inline_cue!r}"
        if found is not None:
            fix = ("rename the label or give its words through the verbalizer" if is_label else
                   "remove or reword that text in the data, or use a template whose cues do not occur in it")
            raise DataError(f"{what} contains {found}; in the prompt it would read as part of the template "
                            f"{self.example!r} (e.g. a fake demonstration or answer). Fix: {fix}.")

    def answer(self, target: str) -> str:
        """The continuation the LM scores: lead + verbalized label (classification) or lead + output."""
        parsed = self._parsed
        if parsed.target == "label":
            body = self.verbalize(target)
        else:
            body = target
            self.check_text(body, "an output")
        return ("" if self.chat else parsed.lead) + body

    def chat_frame(self, tokenizer: Any) -> tuple[str, str, bool]:
        """Fixed chat text around the user content: ``(prefix, suffix, instruction_in_system)``.

        Renders ``[system: instruction, user: <placeholder>]`` with ``add_generation_prompt=True`` and
        splits on the placeholder. When the chat template rejects a system message the instruction is
        left out of the frame (``instruction_in_system=False``) and belongs at the start of the content.
        """
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"chat=True but tokenizer {type(tokenizer).__name__} has no chat template; use "
                             f"chat=False or an instruction-tuned model's tokenizer.")
        user = [{"role": "user", "content": _CHAT_PLACEHOLDER}]
        in_system = bool(self.instruction)
        messages = ([{"role": "system", "content": self.instruction}] if in_system else []) + user
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            if not in_system:
                raise
            in_system = False
            text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str) or text.count(_CHAT_PLACEHOLDER) != 1:
            raise ValueError("the tokenizer's chat template did not render the user content exactly once; "
                             "use chat=False for this tokenizer.")
        prefix, suffix = text.split(_CHAT_PLACEHOLDER)
        if in_system and self.instruction not in prefix:
            in_system = False  # the template dropped the system message
        return prefix, suffix, in_system

    def _fill(self, pieces: Sequence[tuple[str, str | None]], inputs: Mapping[str, str],
              example_id: str | None, *, check: bool = True) -> str:
        out: list[str] = []
        where = f"example {example_id!r}" if example_id is not None else "the query"
        for literal, name in pieces:
            out.append(literal)
            if name is not None:
                try:
                    value = inputs[name]
                except KeyError:
                    raise DataError(f"{where} has no input field {name!r} (it has {sorted(inputs)}); the "
                                    f"template uses {{{name}}}. Fix the data or the template.") from None
                value = value if isinstance(value, str) else str(value)
                if check:
                    self.check_text(value, f"input field {name!r} of {where}", field=name)
                out.append(value)
        return "".join(out)


def verbalize(label: str, verbalizer: Mapping[str, str] | None = None) -> str:
    """The word(s) ``label`` is written as: ``verbalizer[label]``, or, without a verbalizer, the label with
    ``_`` as spaces. The one label verbalizer of ragicl (templates, the LangChain selector).

    >>> verbalize("very_positive"), verbalize("pos", {"pos": "great"})
    ('very positive', 'great')
    """
    if verbalizer is not None:
        if label not in verbalizer:
            raise DataError(f"label {label!r} is not in the verbalizer (which maps "
                            f"{sorted(verbalizer)}); add it to the verbalizer.")
        return verbalizer[label]
    return label.replace("_", " ")


def _title(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]
