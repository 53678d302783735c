"""Subprocess side of tests/test_index_reliability.py (not a test module; importing it does nothing).

    python tests/_index_worker.py kill-at STEP PATH   save variant "b" to PATH, SIGKILL itself at STEP
    python tests/_index_worker.py save-loop N PATH    save variants "a", "b", "a"... N times to PATH

Two variants of one small index: the same 40 examples, in opposite orders. Every file has the same size in
both, but the contents differ, so a reader that pairs one version's faiss file or vectors with the other's
examples is caught by :func:`check_consistent`.
"""

from __future__ import annotations

import os
import signal
import sys

TEXTS = [f"example number {i} about {'cats' if i % 2 else 'dogs'} and {i * 7 % 13} apples" for i in range(40)]


def variant(name: str):
    """The index of variant ``"a"`` (examples in order) or ``"b"`` (reversed), hash-32 embedder, Flat."""
    from ragicl.data import from_records
    from ragicl.index.core import ExampleIndex

    order = range(40) if name == "a" else range(39, -1, -1)
    rows = [{"id": str(i), "text": TEXTS[i], "label": "odd" if i % 2 else "even"} for i in order]
    return ExampleIndex.build(from_records(rows, id_field="id", input_fields=["text"]), embedder="hash-32",
                              device="cpu")


_EXPECTED: dict[str, object] = {}


def check_consistent(index) -> str:
    """Which variant ``index`` is (``"a"``/``"b"``); ``AssertionError`` if its parts come from both."""
    import numpy as np

    from ragicl.index.embed import HashEmbedder

    ids = [ex.id for ex in index.examples]
    name = "a" if ids == [str(i) for i in range(40)] else "b" if ids == [str(i) for i in range(39, -1, -1)] else "?"
    assert name != "?", f"examples in neither variant's order: {ids[:5]}..."
    if name not in _EXPECTED:
        _EXPECTED[name] = HashEmbedder(32).encode([ex.text() for ex in index.examples])
    expected = _EXPECTED[name]
    np.testing.assert_array_equal(np.asarray(index.embeddings), expected)  # vectors match the examples
    stored = index._faiss_index.reconstruct_n(0, index._faiss_index.ntotal)  # and so does the faiss file
    np.testing.assert_array_equal(stored, expected, err_msg="faiss vectors from another version")
    return name


def main(argv: list[str]) -> int:
    from ragicl.index import folder as _index_io

    mode, arg, path = argv
    if mode == "kill-at":
        index = variant("b")

        def die(step: str) -> None:
            if step == arg:
                os.kill(os.getpid(), signal.SIGKILL)

        _index_io.checkpoint = die
        index.save(path)
        return 3  # the step never came
    if mode == "save-loop":
        indexes = [variant("a"), variant("b")]
        print("ready", flush=True)
        for i in range(int(arg)):
            indexes[i % 2].save(path)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
