"""Persistence and estimator conventions of ICLClassifier / ICLGenerator: pickling, save/load (atomic,
index embedded or referenced, clear errors), and the scikit-learn contract (clone, GridSearchCV over k)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import dataset_path

from ragicl import ExampleIndex, HashEmbedder, ICLClassifier, ICLGenerator, PromptTemplate, read_dataset
from ragicl.estimators.base import EstimatorFormatError

pytestmark = pytest.mark.slow

TEMPLATE = PromptTemplate(example="Review: {text}\nSentiment: {label}")
QUERIES = ["a gripping, beautifully shot film", "dull and far too long", "not bad at all"]


@pytest.fixture(scope="module")
def sst2_small():
    return read_dataset(dataset_path("sst2", "train")).sample(12, seed=5)


@pytest.fixture(scope="module")
def hash_index(sst2_small):
    return ExampleIndex.build(sst2_small, embedder=HashEmbedder(64), show_progress=False)


@pytest.fixture(scope="module")
def fitted(smollm_path, hash_index):
    """A classifier whose LM is given by name (so pickling/saving stores the name, not the weights)."""
    return ICLClassifier(smollm_path, TEMPLATE, k=2, max_prompt_tokens=200, show_progress=False).fit(hash_index)


def _same_predictions(a, b) -> None:
    pa, pb = a.prompts(QUERIES), b.prompts(QUERIES)
    assert [p.token_ids for p in pa] == [p.token_ids for p in pb]  # same retrieval and packing, exactly
    proba_a, proba_b = a.predict_proba(QUERIES), b.predict_proba(QUERIES)
    # same model, same token ids: the only freedom is float rounding of one forward pass
    np.testing.assert_allclose(proba_a, proba_b, rtol=0, atol=1e-5)
    assert a.predict(QUERIES) == b.predict(QUERIES) or np.min(np.abs(np.diff(proba_a, axis=1))) < 1e-5


def test_fitted_classifier_pickles_and_predicts_the_same(fitted):
    blob = pickle.dumps(fitted)  # failed before: a local closure of the packer's encoder
    assert len(blob) < 2_000_000  # the LM named by a string is not pickled with it
    clone = pickle.loads(blob)
    assert clone.k == 2 and clone.classes_ == fitted.classes_
    _same_predictions(fitted, clone)


def test_save_load_with_the_index_inside(fitted, tmp_path):
    folder = fitted.save(tmp_path / "clf")
    manifest = json.loads((folder / "estimator.json").read_text())
    assert manifest["class"] == "ICLClassifier" and manifest["params"]["k"] == 2
    assert manifest["index"]["kind"] == "embedded" and (folder / manifest["index"]["path"] / "manifest.json").exists()
    loaded = ICLClassifier.load(folder)
    assert loaded.template == TEMPLATE and loaded.template_ == fitted.template_
    assert loaded.get_params(deep=False) == fitted.get_params(deep=False)
    _same_predictions(fitted, loaded)
    # saving again replaces the estimator atomically; the previous index folder is kept for readers that
    # opened the old estimator.json, older ones are removed
    first = manifest["index"]["path"]
    fitted.set_params(k=1)
    try:
        fitted.save(folder)
        fitted.save(folder)
    finally:
        fitted.set_params(k=2)
    last = json.loads((folder / "estimator.json").read_text())
    assert last["params"]["k"] == 1 and last["previous_index"] not in (None, first)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("index-")) == sorted(
        [last["index"]["path"], last["previous_index"]])
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temp files


def test_save_refers_to_an_index_folder_and_detects_changes(smollm_path, hash_index, sst2_small, tmp_path):
    hash_index.save(tmp_path / "index")
    clf = ICLClassifier(smollm_path, TEMPLATE, k=2, max_prompt_tokens=200, show_progress=False)
    clf.fit(tmp_path / "index")  # a saved index folder: the estimator refers to it
    folder = clf.save(tmp_path / "clf")
    entry = json.loads((folder / "estimator.json").read_text())["index"]
    assert entry["kind"] == "reference" and entry["path"] == str((tmp_path / "index").resolve())
    assert not [p for p in folder.iterdir() if p.name.startswith("index-")]
    _same_predictions(clf, ICLClassifier.load(folder))
    # the referenced index is rebuilt on other data: loading says so instead of predicting from it
    other = ExampleIndex.build(sst2_small.subset(range(6)), embedder=HashEmbedder(64), show_progress=False)
    other.save(tmp_path / "index")
    with pytest.raises(EstimatorFormatError, match="other data"):
        ICLClassifier.load(folder)


def test_clear_errors_for_missing_foreign_and_wrong_class_folders(fitted, tmp_path):
    with pytest.raises(EstimatorFormatError, match="does not exist"):
        ICLClassifier.load(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(EstimatorFormatError, match="not a saved ragicl estimator"):
        ICLClassifier.load(foreign)
    with pytest.raises(EstimatorFormatError, match="refusing to write"):
        fitted.save(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # untouched
    fitted.save(tmp_path / "clf")
    with pytest.raises(EstimatorFormatError, match="ICLClassifier.load"):
        ICLGenerator.load(tmp_path / "clf")
    with pytest.raises(ValueError, match="unknown parameter"):
        ICLClassifier.load(tmp_path / "clf", kk=3)


def test_generator_pickles_and_saves(smollm_path, tmp_path):
    train = read_dataset(dataset_path("gsm8k", "train"), name="gsm8k").subset(range(20))
    index = ExampleIndex.build(train, embedder="hash-64", show_progress=False)
    gen = ICLGenerator(smollm_path, k=1, max_prompt_tokens=256, max_new_tokens=4, show_progress=False).fit(index)
    query = ["Tom has 3 apples and buys 4 more. How many apples does he have?"]
    expected = [p.token_ids for p in gen.prompts(query)]
    for other in (pickle.loads(pickle.dumps(gen)), ICLGenerator.load(gen.save(tmp_path / "gen"))):
        assert other.stop_ == gen.stop_ and other.max_new_tokens == 4
        assert [p.token_ids for p in other.prompts(query)] == expected
        assert other.target_ids("#### 7") == gen.target_ids("#### 7")


# ------------------------------------------------------------------------------ scikit-learn contract
def test_params_repr_and_clone_without_fitting():
    clf = ICLClassifier(k=4, selection="mmr")
    assert repr(clf) == "ICLClassifier(k=4, selection='mmr')"
    assert repr(ICLGenerator()) == "ICLGenerator()"
    params = clf.get_params(deep=True)
    assert params["k"] == 4 and params["template"] is None and "embedder" in params
    assert clf.set_params(k=2, max_prompt_tokens=512) is clf and clf.k == 2 and clf.max_prompt_tokens == 512
    with pytest.raises(ValueError, match="Invalid parameter 'kk'.*Valid parameters are"):
        clf.set_params(kk=3)
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier

    copy = clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params() and is_classifier(copy)
    gen = clone(ICLGenerator(k=2, stop=["\n\n"]))
    assert gen.k == 2 and gen.stop == ["\n\n"]
    assert sklearn.__version__


def test_grid_search_over_k(smollm_path, sst2_small):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV

    texts = [ex.inputs["text"] for ex in sst2_small]
    labels = [ex.label for ex in sst2_small]
    base = ICLClassifier(smollm_path, TEMPLATE, max_prompt_tokens=200, embedder="hash-64", show_progress=False)
    search = GridSearchCV(base, {"k": [0, 2]}, cv=2).fit(texts, labels)
    assert set(search.cv_results_["param_k"]) == {0, 2}
    scores = search.cv_results_["mean_test_score"]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert search.best_params_["k"] in (0, 2) and search.best_estimator_.k == search.best_params_["k"]
    assert set(search.predict(texts[:2])) <= set(labels)
    # fit(X, y) indexed the texts with the hash embedder; k=2 retrieved from them
    if search.best_params_["k"] == 2:
        assert search.best_estimator_.index_.embedder.name == "hash-64"
