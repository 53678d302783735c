"""Subprocess side of tests/test_estimator_reliability.py (not a test module; importing it does nothing).

    python tests/_estimator_worker.py kill-at STEP PATH   save variant "b" to PATH, SIGKILL itself at STEP
                                                          (an estimators.folder.SAVE_STEPS name, or
                                                          "index:<step>" for a step of the embedded index save)
    python tests/_estimator_worker.py save-loop N PATH    save variants "a", "b", "a"... N times to PATH

Two fitted ICLClassifiers that differ in every saved part: the index (the same 40 texts in opposite orders,
other label names), ``k`` and the template. :func:`check_consistent` says which one a loaded estimator is
and fails if its parts come from both. The LM is :class:`CharLM`, a character-level fake with a tokenizer
only (saving and loading an estimator never runs the LM), so a load takes milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys

TEXTS = [f"example number {i} about {'cats' if i % 2 else 'dogs'} and {i * 7 % 13} apples" for i in range(40)]
VARIANTS = {  # name: (order of the rows, label of even/odd rows, k, template)
    "a": (range(40), ("even", "odd"), 2, "Text: {text}\nLabel: {label}"),
    "b": (range(39, -1, -1), ("pair", "impair"), 3, "Input: {text}\nAnswer: {label}"),
}


class CharTokenizer:
    """One id per character, BOS prepended (enough for the packer)."""

    model_max_length = 100_000
    bos_token_id = 1
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        def enc(t: str) -> list[int]:
            return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) + 10 for c in t]

        return {"input_ids": [enc(t) for t in text] if isinstance(text, list) else enc(text)}

    def decode(self, ids):
        return "".join(chr(i - 10) for i in ids if i >= 10)


class CharLM:
    """A language model with a tokenizer and a context length, and nothing to run: saved by its name."""

    name = "char-lm"
    context_length = 4096

    def __init__(self) -> None:
        self.tokenizer = CharTokenizer()


def index_of(name: str):
    from ragicl.data import from_records
    from ragicl.index.core import ExampleIndex

    order, labels, _, _ = VARIANTS[name]
    rows = [{"id": str(i), "text": TEXTS[i], "label": labels[i % 2]} for i in order]
    return ExampleIndex.build(from_records(rows, id_field="id", input_fields=["text"]), embedder="hash-32",
                              device="cpu")


def variant(name: str):
    """The fitted classifier of variant ``"a"`` or ``"b"``."""
    from ragicl import ICLClassifier, PromptTemplate

    _, _, k, template = VARIANTS[name]
    return ICLClassifier(CharLM(), PromptTemplate(template), k=k, max_prompt_tokens=2000, device="cpu",
                         show_progress=False).fit(index_of(name))


def load(path):
    from ragicl import ICLClassifier

    return ICLClassifier.load(path, lm=CharLM())


def check_consistent(est) -> str:
    """Which variant ``est`` is; ``AssertionError`` if its parameters, fitted state and index disagree."""
    import _index_worker

    ids = [ex.id for ex in est.index_.examples]
    name = "a" if ids == [str(i) for i in range(40)] else "b" if ids == [str(i) for i in range(39, -1, -1)] else "?"
    assert name != "?", f"index examples in neither variant's order: {ids[:5]}..."
    order, labels, k, template = VARIANTS[name]
    assert (est.k, est.template.example, est.template_.example) == (k, template, template), name
    assert est.classes_ == tuple(sorted(labels)) == est.index_.labels, (est.classes_, est.index_.labels)
    assert [ex.label for ex in est.index_.examples] == [labels[i % 2] for i in order]
    assert _index_worker.check_consistent(est.index_) == name  # vectors and faiss file match the examples
    assert est.lm == "char-lm" or isinstance(est.lm, CharLM)
    return name


def main(argv: list[str]) -> int:
    from ragicl.estimators import folder as _estimator_folder
    from ragicl.index import folder as _index_io

    mode, arg, path = argv
    if mode == "kill-at":
        est = variant("b")

        def die(step: str, prefix: str = "") -> None:
            if prefix + step == arg:
                os.kill(os.getpid(), signal.SIGKILL)

        _estimator_folder.checkpoint = die
        _index_io.checkpoint = lambda step: die(step, "index:")
        est.save(path)
        return 3  # the step never came
    if mode == "save-loop":
        estimators = [variant("a"), variant("b")]
        print("ready", flush=True)
        for i in range(int(arg)):
            estimators[i % 2].save(path)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
