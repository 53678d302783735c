"""read_dataset: every source format, meta.json, inference, and every bad-input error."""

from __future__ import annotations

import json

import pytest
from conftest import dataset_path

from ragicl._exceptions import DataError
from ragicl.data import from_records, read_dataset

ROWS = [
    {"text": "a gripping film", "label": "positive", "extra": 3},
    {"text": "dull and slow", "label": "negative", "extra": 4},
    {"text": "warm and funny", "label": "positive", "extra": 5},
]


def _check(ds, name=None):
    assert len(ds) == 3
    assert ds.input_fields == ("text",)
    assert ds.labels == ("negative", "positive")
    assert ds.task == "classification"
    assert [ex.id for ex in ds] == ["0", "1", "2"]
    assert ds[1].inputs == {"text": "dull and slow"} and ds[1].label == "negative"
    if name is not None:
        assert ds.name == name


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl(tmp_path):
    _check(read_dataset(_write_jsonl(tmp_path / "d.jsonl", ROWS)), name="d")


def test_json_list_and_wrapped(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    _check(read_dataset(tmp_path / "a.json"))
    _check(read_dataset(str(tmp_path / "b.json")))


def test_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    ds = read_dataset(tmp_path / "d.csv", input_fields=["text"])
    _check(ds)


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    _check(read_dataset(tmp_path / "d.parquet"))  # int column "extra" is not inferred as input


def test_dataframe_and_records():
    pd = pytest.importorskip("pandas")
    _check(read_dataset(pd.DataFrame(ROWS)))
    _check(from_records(ROWS))
    _check(read_dataset(iter(ROWS)))


def test_hf_like_object_with_classlabel():
    pd = pytest.importorskip("pandas")

    class ClassLabel:
        names = ("negative", "positive")

    class FakeHF:  # duck-typed datasets.Dataset
        def __init__(self):
            self.features = {"text": object(), "label": ClassLabel()}

        def to_pandas(self):
            return pd.DataFrame([{"text": r["text"], "label": int(r["label"] == "positive")} for r in ROWS])

    _check(read_dataset(FakeHF()))


def test_ids_labels_and_options():
    rows = [{"uid": "a", "text": "x", "label": 1}, {"uid": "b", "text": "y", "label": 0}]
    ds = read_dataset(rows, id_field="uid", labels=["1", "0"], name="nums")
    assert [ex.id for ex in ds] == ["a", "b"]
    assert ds.labels == ("1", "0") and ds[0].label == "1" and ds.name == "nums"
    unlabeled = read_dataset([{"text": "x"}], label_field=None)
    assert unlabeled[0].label is None and unlabeled.labels == ()


def test_generation():
    ds = read_dataset([{"question": "2+2?", "answer": "4"}], output_field="answer")
    assert ds.task == "generation" and ds.output_field == "answer"
    assert ds.input_fields == ("question",) and ds[0].output == "4" and ds.labels == ()


def test_meta_json_beside_file(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(
        {"task": "classification", "input": ["b", "a"], "labels": ["yes", "no"]}))
    _write_jsonl(tmp_path / "train.jsonl", [{"a": "A", "b": "B", "label": "no"}])
    ds = read_dataset(tmp_path / "train.jsonl")
    assert ds.input_fields == ("b", "a") and ds.labels == ("yes", "no")
    assert ds.name == f"{tmp_path.name}-train"
    assert read_dataset(tmp_path / "train.jsonl", input_fields=["a"]).input_fields == ("a",)


def test_rte_two_fields():
    ds = read_dataset(dataset_path("rte"))
    assert ds.input_fields == ("premise", "hypothesis")
    assert ds.labels == ("entailment", "not_entailment")
    assert len(ds) == 2490 and ds[0].id == "0"
    assert ds[0].text() == ds[0].inputs["premise"] + "\n" + ds[0].inputs["hypothesis"]
    assert read_dataset(dataset_path("rte")).fingerprint() == ds.fingerprint()  # stable ids


def test_gsm8k_generation_from_meta():
    ds = read_dataset(dataset_path("gsm8k", "test"))
    assert ds.task == "generation" and ds.output_field == "answer" and ds.input_fields == ("question",)


@pytest.mark.parametrize("rows, match", [
    ([], "empty"),
    ([{"text": "ok", "label": "a"}, {"label": "b"}], r"row 1.*'text' is missing"),
    ([{"text": "ok", "label": "a"}, {"text": "  ", "label": "b"}], r"row 1.*'text' is empty"),
    ([{"text": "ok", "label": "a"}, {"text": "x"}], r"row 1.*label field 'label' is missing"),
    ([{"text": "ok", "label": None}], r"row 0.*label"),
    ([{"text": "ok", "id": "1"}, {"text": "b", "id": "1"}], "repeats"),
    ([{"label": "a", "n": 1}], "could not infer the input fields"),
    ([{"q": "x"}], "needs an output field"),
])
def test_bad_rows(rows, match):
    kwargs = {"id_field": "id", "label_field": None} if match == "repeats" else {}
    if match == "needs an output field":
        kwargs = {"task": "generation"}
    with pytest.raises(DataError, match=match):
        read_dataset(rows, **kwargs)


def test_label_outside_label_set():
    with pytest.raises(DataError, match=r"row 1: label 'maybe' is not in the label set \['yes', 'no'\]"):
        read_dataset([{"text": "a", "label": "yes"}, {"text": "b", "label": "maybe"}], labels=["yes", "no"])


def test_dataframe_nan_is_missing():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame([{"text": "a", "label": "x"}, {"text": None, "label": "y"}])
    with pytest.raises(DataError, match="row 1: input field 'text' is missing"):
        read_dataset(df, input_fields=["text"])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no dataset file"):
        read_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_dataset(tmp_path)
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown dataset format '.txt'"):
        read_dataset(tmp_path / "d.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label"\n')
    with pytest.raises(DataError, match="line 3 of .*bad.jsonl is not valid JSON"):
        read_dataset(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text("[{]")
    with pytest.raises(DataError, match="not valid JSON"):
        read_dataset(tmp_path / "bad.json")
    (tmp_path / "scalar.json").write_text("3")
    with pytest.raises(DataError, match="expected a list of objects"):
        read_dataset(tmp_path / "scalar.json")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="could not read parquet"):
        read_dataset(tmp_path / "bad.parquet")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(DataError, match="could not read"):
        read_dataset(tmp_path / "latin.jsonl")


def test_jsonl_error_reports_line_with_blank_lines(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}])
    with open(tmp_path / "d.jsonl", "a") as fh:
        fh.write("\n" + json.dumps({"text": "", "label": "x"}) + "\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\)"):
        read_dataset(tmp_path / "d.jsonl")


def test_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        read_dataset(ROWS, task="regression")
    with pytest.raises(DataError, match="list of label names"):
        read_dataset(ROWS, labels="positive")
    with pytest.raises(DataError, match="single mapping"):
        read_dataset(ROWS[0])
    with pytest.raises(TypeError):
        read_dataset(42)


def test_an_id_column_is_the_id_by_default_not_an_input(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"id": "a7", "text": "fine film", "label": "pos"}\n'
                     '{"id": "b9", "text": "dull plot", "label": "neg"}\n')
    ds = read_dataset(jsonl)
    assert ds.input_fields == ("text",) and [ex.id for ex in ds] == ["a7", "b9"]
    assert "a7" not in ds[0].text()
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,text,label\nx1,fine film,pos\nx1,dull plot,neg\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\).*id 'x1' repeats row 0"):
        read_dataset(csv_path)
    csv_path.write_text("id,text,label\nx1,fine film,pos\n,dull plot,neg\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\).*id field 'id' is missing"):
        read_dataset(csv_path)
    # id_field=None: row numbers, and the id column is still not an input field
    ds = read_dataset(jsonl, id_field=None)
    assert [ex.id for ex in ds] == ["0", "1"] and ds.input_fields == ("text",)
    # no id column: row numbers as before
    assert [ex.id for ex in read_dataset([{"text": "a", "label": "x"}])] == ["0"]


def test_an_empty_label_is_an_error_with_its_line(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "fine film", "label": "pos"}\n{"text": "dull plot", "label": ""}\n')
    with pytest.raises(DataError, match=r"line 2.*label field 'label' is empty"):
        read_dataset(jsonl)
    with pytest.raises(DataError, match=r"row 0.*is empty"):
        read_dataset([{"text": "a", "label": "  "}])
    with pytest.raises(DataError, match="non-empty names"):
        read_dataset([{"text": "a", "label": "x"}], labels=["x", ""])


# ----------------------------------------------------------------------------- label values (issue 35)
@pytest.mark.parametrize("values, kinds", [
    ([1, "1"], r'number 1 at row 0; text "1" at row 1'),
    (["1", 1.0], r'text "1" at row 0; number 1.0 at row 1'),
    ([True, "True"], r'boolean true at row 0; text "True" at row 1'),
    ([1, True], r"number 1 at row 0; boolean true at row 1"),
])
def test_a_label_column_of_mixed_kinds_is_refused(values, kinds):
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate(values)]
    with pytest.raises(DataError, match=rf"label field 'label' mixes kinds of values: {kinds}\..*Fix: write "
                                        "every label the same way"):
        read_dataset(rows)


def test_label_values_become_names_by_one_rule(tmp_path):
    numbers = read_dataset([{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": 2.5},
                            {"text": "d", "label": 0}])
    assert numbers.labels == ("0", "1", "2.5") and [ex.label for ex in numbers] == ["1", "1", "2.5", "0"]
    flags = read_dataset([{"text": "a", "label": True}, {"text": "b", "label": False}])
    assert flags.labels == ("false", "true") and flags[0].label == "true"
    texts = read_dataset([{"text": "a", "label": "True"}, {"text": "b", "label": "1"}])
    assert texts.labels == ("1", "True")  # text stays as written
    # a file names the line of each kind; a column of lists is not a label
    path = _write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "label": "1"},
                                                   {"text": "c", "label": 1}])
    with pytest.raises(DataError, match=r'text "1" at row 0 \(line 1\) of .*; number 1 at row 2 \(line 3\)'):
        read_dataset(path)
    with pytest.raises(DataError, match=r"row 0: label \[1\] is a list; expected text, a number or a boolean"):
        read_dataset([{"text": "a", "label": [1]}])
    pd = pytest.importorskip("pandas")  # numpy scalars follow the same rule
    df = pd.DataFrame({"text": ["a", "b"], "label": [1, 0]})
    assert read_dataset(df).labels == ("0", "1") and read_dataset(df, labels=["1", "0"]).labels == ("1", "0")
    assert read_dataset(pd.DataFrame({"text": ["a", "b"], "label": [True, False]})).labels == ("false", "true")


def test_a_label_with_a_line_break_is_refused_at_read_time(tmp_path):
    fake = "negative\n\nText: terrible\nLabel: positive"
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "positive"}, {"text": "ok", "label": fake}])
    with pytest.raises(DataError, match=r"row 1 \(line 2\) of .*: label 'negative\\n\\nText: terrible.*contains "
                                        r"'\\n'.*fake demonstration.*Fix: correct the label"):
        read_dataset(path)
    for bad in ("a\rb", "tab\there", "x\u2028y", "nul\x00"):
        with pytest.raises(DataError, match="contains"):
            read_dataset([{"text": "t", "label": bad}])
    with pytest.raises(DataError, match=r"label 'b\\nc' of the label set contains"):
        read_dataset([{"text": "t", "label": "a"}], labels=["a", "b\nc"])
    assert read_dataset([{"text": "t", "label": "très bien 😀 отлично"}]).labels == ("très bien 😀 отлично",)


def test_deeply_nested_json_is_a_data_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": ' + deep + ', "label": "x"}\n')
    with pytest.raises(DataError, match="line 2 of .*d.jsonl nests JSON arrays/objects too deeply"):
        read_dataset(tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text("[" + deep + "]")
    with pytest.raises(DataError, match="d.json nests JSON arrays/objects too deeply"):
        read_dataset(tmp_path / "d.json")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "meta.json").write_text(deep)
    _write_jsonl(tmp_path / "sub" / "train.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match="could not read .*meta.json: RecursionError"):
        read_dataset(tmp_path / "sub" / "train.jsonl")
