"""The packer's fast paths: the query-block encoders (checked against the real SmolLM2 tokenizer), prepared
(pre-tokenized) queries, and the greedy selection with its early exit."""

from __future__ import annotations

import copy
import logging
import random

import pytest
from test_pack import _read, assert_exact, random_packs

from ragicl.prompt._pack_fast import candidate_encoders, shared_ints
from ragicl.prompt.pack import Packer, PreparedQuery, greedy_select
from ragicl.prompt.template import PromptTemplate
from ragicl.types import Example

# texts the pool never shows: contractions (upper case too), digits, whitespace runs, tabs, CRLF, trailing
# and leading spaces, punctuation runs, non-ASCII letters, an added (special) token, control characters
ODD_TEXTS = [
    "", " ", "  ", "\n", "\n\n", " \n ", "a", "  leading and trailing  ", "tab\tsep\t\tarated\t",
    "crlf\r\nline\rcr", "I'm sure we'll see they've said it's 'quoted' isn't it", "DON'T SHOUT'S 'LL",
    "v2.0 costs $3,500.99 -- 100% (really)!!! ...", "x    y\n\n\n   z", "emoji 😀 and café naïve",
    "zero\u200bwidth", "nbsp\u00a0here", "vt\x0bff\x0cfs\x1cus\x1f", "<|im_start|>user hi<|im_end|>",
    "a <|endoftext|> b", "<not special> < | >", "numbers 0123456789 123abc abc123", "'s's't're've'm'll'd",
    "qwertyuiopzxcvbnm supercalifragilisticexpialidocious floccinaucinihilipilification",
]


@pytest.fixture(scope="module")
def sst2(sst2_train_path) -> list[Example]:
    return _read(sst2_train_path, ("text",), 400)


@pytest.fixture(scope="module")
def packer(smollm_tokenizer, sst2) -> Packer:
    return Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=256).fit(sst2)


def _fuzz_texts(n: int, seed: int) -> list[str]:
    """Random texts, every other one printable ASCII + tab/newline/CR only."""
    rng = random.Random(seed)
    ascii_chars = list("abcXYZ019 '''\n\n\t\r.,!?-:;\"()<>|$%")
    other = ["é", "ß", "中", "\u00a0", "\x0b", "<|im_end|>"]
    words = ["the", " film", "isn't", "Review", "Sentiment:", "'ll", "  ", "\n\n", "42", " 'S", "'re"]
    texts = []
    for i in range(n):
        chars = ascii_chars if i % 2 else ascii_chars + other
        texts.append("".join(rng.choice(chars) if rng.random() < 0.6 else rng.choice(words)
                             for _ in range(rng.randint(0, 40))))
    return texts


# ----------------------------------------------------------------------------------------- encoders
def test_backend_encoder_chosen_and_equal_to_the_tokenizer(packer, smollm_tokenizer):
    """The query block goes through the tokenizers Rust backend (fast tokenizer's batch encode), which
    gives the wrapper's ids on odd and fuzzed texts (non-ASCII, added tokens, whitespace runs, ...)."""
    tok = smollm_tokenizer
    assert packer.fast_ and packer.encoder_ == "backend"
    texts = ODD_TEXTS + _fuzz_texts(600, seed=0)
    reference = [list(ids) for ids in tok(texts, add_special_tokens=False).input_ids]
    assert [packer._encode(t) for t in texts] == reference
    assert packer._encode_many(texts) == reference
    assert packer._encode_many([]) == []


def test_backend_rejected_when_it_disagrees_at_fit(smollm_tokenizer, sst2):
    tok = smollm_tokenizer
    texts = [PromptTemplate().render_example(ex) for ex in sst2[:50]]
    reference = [list(ids) for ids in tok(texts, add_special_tokens=False).input_ids]
    wrapper = (lambda t: tok(t, add_special_tokens=False).input_ids,
               lambda ts: [list(i) for i in tok(ts, add_special_tokens=False).input_ids])
    assert [name for name, _, _ in candidate_encoders(tok, wrapper, texts, reference)] == ["backend", "wrapper"]
    bad = [list(ids) for ids in reference]
    bad[17][2] += 1  # one wrong id in one text is enough to drop the backend
    assert [name for name, _, _ in candidate_encoders(tok, wrapper, texts, bad)] == ["wrapper"]


def test_other_normalizer_uses_the_backend_and_stays_exact(smollm_tokenizer, sst2):
    from tokenizers import normalizers

    tok = copy.deepcopy(smollm_tokenizer)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert tok("ABC", add_special_tokens=False).input_ids == tok("abc", add_special_tokens=False).input_ids
    packer = Packer(tok, PromptTemplate(), max_prompt_tokens=300).fit(sst2[:150])
    assert packer.fast_ and packer.encoder_ == "backend"
    for query in ODD_TEXTS[:12] + ["LOUD Review"]:
        assert_exact(tok, packer.pack({"text": query}, list(range(10))))


def test_a_wrong_encoder_fails_the_fit_check_and_the_next_one_is_used(smollm_tokenizer, sst2, monkeypatch,
                                                                       caplog):
    import ragicl.prompt.pack as pack_module

    real = pack_module.candidate_encoders

    def with_a_wrong_one(*args):
        def one(text: str) -> list[int]:
            return [0, *smollm_tokenizer(text, add_special_tokens=False).input_ids]

        return [("wrong", one, lambda texts: [one(t) for t in texts]), *real(*args)]

    monkeypatch.setattr(pack_module, "candidate_encoders", with_a_wrong_one)
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=256).fit(sst2[:100])
    assert packer.fast_ and packer.encoder_ == "backend"
    for _, _, prompt in random_packs(packer, sst2[:100], 20, seed=1):
        assert_exact(smollm_tokenizer, prompt)


def test_queries_unlike_the_pool_pack_exactly(packer, smollm_tokenizer, sst2):
    rng = random.Random(2)
    queries = ODD_TEXTS + _fuzz_texts(100, seed=3)
    cands = [rng.sample(range(len(sst2)), 16) for _ in queries]
    prompts = packer.pack_batch(queries, cands)
    for query, cand, prompt in zip(queries, cands, prompts):
        assert_exact(smollm_tokenizer, prompt)
        assert prompt == packer.pack(query, cand)


def test_shared_ints_keeps_values_and_shares_objects():
    a = [[int("70000"), 5, int("70001")], []]
    b = [[int("70000")]]
    a2, b2 = shared_ints(a, b)
    assert a2 == [tuple(ids) for ids in a] and b2 == [tuple(ids) for ids in b]
    assert a2[0][0] is b2[0][0] and a[0][0] is not b[0][0]
    assert shared_ints([[-1, 3]]) == ([(-1, 3)],)  # negative ids (not a real tokenizer): values kept


# ----------------------------------------------------------------------------------- prepared queries
def test_prepared_queries_give_the_same_prompts(packer, smollm_tokenizer, sst2):
    rng = random.Random(4)
    queries = [sst2[rng.randrange(400)] for _ in range(30)] + ["café au lait", {"text": "it's <|im_end|> ok"}]
    cands = [rng.sample(range(400), rng.randint(0, 30)) for _ in queries]
    prepared = packer.prepare(queries)
    assert all(isinstance(p, PreparedQuery) for p in prepared)
    for query, p in zip(queries, prepared):
        assert p.cue == packer.template.render_query(packer._query_inputs(query)[0])
        assert list(p.block_ids) == smollm_tokenizer(packer.template.separator + p.cue,
                                                     add_special_tokens=False).input_ids
    raw = packer.pack_batch(queries, cands)
    assert packer.pack_batch(prepared, cands) == raw
    assert [packer.pack(p, c) for p, c in zip(prepared, cands)] == raw
    mixed = [p if i % 2 else q for i, (p, q) in enumerate(zip(prepared, queries))]
    assert packer.pack_batch(mixed, cands) == raw
    assert packer.pack_batch(prepared, cands, max_examples=3) == packer.pack_batch(queries, cands, max_examples=3)


def test_prepared_queries_tokenize_nothing_and_are_shared_across_budgets(packer, smollm_tokenizer, sst2):
    queries = sst2[:20]
    cands = [list(range(i, i + 24)) for i in range(20)]
    prepared = packer.prepare(queries)
    other = Packer(smollm_tokenizer, packer.template, max_prompt_tokens=512).fit(sst2)
    expected = other.pack_batch(queries, cands)

    def boom(*args):
        raise AssertionError("a prepared query was tokenized again")

    other._encode = other._encode_many = other._batch_encode = boom
    assert other.pack_batch(prepared, cands) == expected
    assert [other.pack(p, c) for p, c in zip(prepared, cands)] == expected


def test_prepared_queries_from_another_template_are_re_tokenized(packer, smollm_tokenizer, sst2):
    tpl = PromptTemplate("Text: {text}\nLabel: {label}")
    other = Packer(smollm_tokenizer, tpl, max_prompt_tokens=256).fit(sst2)
    prepared = packer.prepare(sst2[:10])
    cands = [[1, 2, 3]] * 10
    got = other.pack_batch(prepared, cands)
    assert got == other.pack_batch(sst2[:10], cands)
    assert all(p.text.endswith("Label:") for p in got)
    assert other.pack(prepared[0], [1]) == other.pack(sst2[0], [1])


def test_prepared_queries_on_the_re_tokenizing_path(smollm_tokenizer, sst2, caplog):
    tok = smollm_tokenizer
    slow = Packer(tok, PromptTemplate(), max_prompt_tokens=256, mode="retokenize").fit(sst2)
    assert not slow.fast_ and slow.encoder_ == "wrapper"
    prepared = slow.prepare(sst2[:15])
    for p in prepared:
        assert list(p.block_ids) == tok(slow.template.separator + p.cue, add_special_tokens=False).input_ids
    cands = [list(range(i, i + 20)) for i in range(15)]
    got = slow.pack_batch(prepared, cands)
    assert got == slow.pack_batch(sst2[:15], cands)
    for prompt in got:
        assert_exact(tok, prompt)
    merging = PromptTemplate("{text} {label}", separator="")  # blocks merge: the natural fallback
    with caplog.at_level(logging.WARNING, logger="ragicl.prompt.pack"):
        fallback = Packer(tok, merging, max_prompt_tokens=200).fit(sst2[:100])
    assert not fallback.fast_ and fallback.encoder_ == "wrapper"
    prepared = fallback.prepare(sst2[:10])
    assert fallback.pack_batch(prepared, cands[:10]) == fallback.pack_batch(sst2[:10], cands[:10])


# ---------------------------------------------------------------------------------------- selection
def _select_reference(cands, lens, avail, cap):
    """The plain greedy loop (no early exit), as the packer ran it before."""
    chosen, skipped, seen = [], [], set()
    for p in cands:
        if p < 0 or p in seen:
            continue
        seen.add(p)
        if lens[p] <= avail and len(chosen) < cap:
            chosen.append(p)
            avail -= lens[p]
        else:
            skipped.append(p)
    return chosen, skipped


def test_select_equals_the_plain_greedy_loop():
    rng = random.Random(5)
    for _ in range(3000):
        n = rng.randint(1, 40)
        lens = [rng.randint(3, 60) for _ in range(n)]
        cands = [rng.randrange(-1, n) for _ in range(rng.randint(0, 50))]
        unique = [p for p in dict.fromkeys(cands) if p >= 0]
        avail = rng.randint(-10, 400)
        cap = rng.choice([0, 1, 3, 8, 10**9])
        assert greedy_select(unique, lens, avail, cap, min(lens)) == _select_reference(cands, lens, avail, cap)


def test_candidate_edge_cases(packer, sst2):
    q = sst2[0]
    base = packer.pack(q, [5, 6, 7])
    assert packer.pack(q, iter([5, 6, 7])) == base  # any iterable
    assert packer.pack(q, (5, -1, 6, 5, 7, -3)) == base  # padding, negatives and repeats ignored
    zero = packer.pack(q, [5, 6, 7], max_examples=0)
    assert zero.included == () and zero.excluded == tuple(sst2[i].id for i in (5, 6, 7))
    # the greedy loop stops early once nothing more can fit, but a bad position in the tail still raises
    cands = list(range(300)) + [10_000]
    assert len(packer.pack(q, cands[:300]).included) < 50
    with pytest.raises(IndexError, match="400 fitted examples"):
        packer.pack(q, cands)
    with pytest.raises(IndexError, match="400 fitted examples"):
        packer.pack(q, [1, 2.5], max_examples=1)  # 2.5 is past the cap, never read by the loop
