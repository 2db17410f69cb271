"""Records from every kind of source (neurorit/data_sources.py): JSONL, JSON, parquet, a datasets.save_to_disk
folder and a Hub dataset id (offline, from a datasets cache the test lays out), with the same field aliases, chat
rows (messages / ShareGPT), and one-line errors that name the row. Every file here is written for real."""
from __future__ import annotations

import json
import shutil

import pytest

from neurorit.errors import UserError
from neurorit.records import load_records, read_lines

DPR = {"id": "q1", "question": "who wrote it?", "answers": ["Ann Lee"],
       "ctxs": [{"title": "A", "text": "Ann Lee wrote it.", "score": 3.0, "has_answer": True},
                {"title": "B", "text": "Bob sang.", "score": 9.0, "has_answer": False}]}
BERGEN = {"_id": "q2", "query": "capital of France", "golden_answers": ["Paris"],
          "contexts": [{"title": "France", "content": "The capital is Paris."}, {"content": "Rome is old."}]}
ROWS = [DPR, BERGEN]


def _check(records) -> None:
    """The two rows above, whatever the source: ids, questions, answers and passages through the aliases."""
    assert [r.id for r in records] == ["q1", "q2"]
    assert [r.question for r in records] == ["who wrote it?", "capital of France"]
    assert [r.answers for r in records] == [["Ann Lee"], ["Paris"]]
    assert [p.text for p in records[1].ctxs] == ["The capital is Paris.", "Rome is old."]
    assert records[0].ctxs[0].has_answer is True and records[0].ctxs[1].score == 9.0


def _parquet(path, rows) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_struct_array(pa.array(rows)), str(path))  # columns: the union of the rows' keys
    return str(path)


def test_jsonl_json_and_json_lines(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    array = tmp_path / "r.json"
    array.write_text(json.dumps(ROWS, indent=2))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    lines = tmp_path / "lines.json"
    lines.write_text(jsonl.read_text())
    for path in (jsonl, array, wrapped, lines):
        _check(load_records(str(path)))
    assert [line for line, _, _ in read_lines(str(jsonl))] == jsonl.read_text().splitlines()


def test_parquet(tmp_path):
    """Mixed spellings in one table: pyarrow fills the other spelling's column with nulls, which count as absent."""
    _check(load_records(_parquet(tmp_path / "r.parquet", ROWS)))


def test_save_to_disk_folders(tmp_path):
    import datasets

    rows = [json.loads(json.dumps(r)) for r in (DPR, {**DPR, "id": "q2"})]
    one = datasets.Dataset.from_list(rows)
    one.save_to_disk(str(tmp_path / "one"))
    assert [r.id for r in load_records(str(tmp_path / "one"))] == ["q1", "q2"]
    both = datasets.DatasetDict({"train": one, "test": one.select([1])})
    both.save_to_disk(str(tmp_path / "both"))
    assert [r.id for r in load_records(f"{tmp_path / 'both'}:test")] == ["q2"]
    with pytest.raises(UserError, match="several splits; name one as .*:<split>, one of train, test"):
        load_records(str(tmp_path / "both"))
    with pytest.raises(UserError, match="no split 'dev'"):
        load_records(f"{tmp_path / 'both'}:dev")
    with pytest.raises(UserError, match="without splits"):
        load_records(f"{tmp_path / 'one'}:train")


def _hub_dataset_cache(tmp_path, rows) -> str:
    """A datasets cache holding the Hub dataset ``org/qa`` (splits train, test) as ``load_dataset`` leaves it after an
    online load: ``<cache>/org___qa/default/0.0.0/<hash>/{dataset_info.json, qa-<split>.arrow}``."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = _parquet(tmp_path / "src.parquet", rows)
    cache = tmp_path / "datasets"
    builder = Parquet(cache_dir=str(cache), dataset_name="qa", data_files={"train": [src], "test": [src]},
                      hash="0123456789abcdef")
    builder.download_and_prepare()
    (cache / "qa").rename(cache / "org___qa")
    config = next((cache / "org___qa").iterdir())
    config.rename(config.parent / "default")
    return str(cache)


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    cache = _hub_dataset_cache(tmp_path, ROWS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.chdir(tmp_path)  # no local file shadows the id
    return cache


def test_hub_dataset_id_offline(offline_datasets):
    _check(load_records("org/qa:test"))
    assert [r.id for r in load_records("org/qa:train", limit=1)] == ["q1"]


def test_unknown_hub_dataset_offline_is_one_line(offline_datasets):
    with pytest.raises(UserError) as err:
        load_records("nobody/none:train")
    assert "\n" not in str(err.value) and "nobody/none" in str(err.value) and "cache" in str(err.value)


def test_missing_file_is_not_taken_for_a_hub_id(tmp_path):
    for path in (str(tmp_path / "train.jsonl"), "data/train.parquet", "/abs/missing.json"):
        with pytest.raises(UserError, match="records file not found"):
            load_records(path)


# ------------------------------------------------------------------------------------ chat-style rows
MESSAGES = {"id": "m1", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "who wrote it?"},
                                     {"role": "assistant", "content": "Ann Lee"}],
            "ctxs": DPR["ctxs"]}
SHAREGPT = {"id": "s1", "conversations": [{"from": "human", "value": "capital of France"},
                                          {"from": "gpt", "value": "Paris"}],
            "documents": BERGEN["contexts"]}


def test_messages_and_sharegpt_rows(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(MESSAGES) + "\n" + json.dumps(SHAREGPT) + "\n")
    m, s = load_records(str(path))
    assert (m.question, m.answers, m.ctxs[0].text) == ("who wrote it?", ["Ann Lee"], "Ann Lee wrote it.")
    assert (s.question, s.answers, s.ctxs[1].text) == ("capital of France", ["Paris"], "Rome is old.")
    explicit = {**MESSAGES, "answers": ["A. Lee", "Ann Lee"]}  # an answers field wins over the assistant turn
    path.write_text(json.dumps(explicit) + "\n")
    assert load_records(str(path))[0].answers == ["A. Lee", "Ann Lee"]


def test_messages_without_a_user_turn_name_the_row(tmp_path):
    path = tmp_path / "chat.jsonl"
    bad = {**MESSAGES, "messages": [{"role": "assistant", "content": "x"}]}
    path.write_text(json.dumps(MESSAGES) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r"chat.jsonl:2: record has no question .*user turn"):
        load_records(str(path))


# ------------------------------------------------------------------------------------ errors naming the row
def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def test_a_missing_column_names_the_row(tmp_path):
    """A parquet file, a JSON array and a saved dataset whose second row lacks its answers: one line, that row."""
    import datasets

    rows = [DPR, _without({**DPR, "id": "q2"}, "answers")]
    array = tmp_path / "r.json"
    array.write_text(json.dumps(rows))
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([json.loads(json.dumps(r)) for r in rows]).save_to_disk(str(folder))
    for source, where in ((_parquet(tmp_path / "r.parquet", rows), "r.parquet row 1"),
                          (str(array), "r.json row 1"), (str(folder), "saved row 1")):
        with pytest.raises(UserError) as err:
            load_records(source)
        message = str(err.value)
        assert "\n" not in message and f"{where}: record has no answers" in message, source


def test_a_column_missing_everywhere_names_the_first_row(tmp_path):
    path = _parquet(tmp_path / "r.parquet", [_without(DPR, "ctxs")] * 2)
    with pytest.raises(UserError, match=r"r.parquet row 0: record has no passages"):
        load_records(path)


def test_damaged_files_are_one_line(tmp_path):
    broken = tmp_path / "r.parquet"
    broken.write_bytes(b"not parquet at all")
    bad_json = tmp_path / "r.json"
    bad_json.write_text('[{"question": ')
    scalar = tmp_path / "s.json"
    scalar.write_text("42")
    not_saved = tmp_path / "folder"
    not_saved.mkdir()
    for source, needle in ((broken, "not a readable parquet file"), (bad_json, "malformed JSON"),
                           (scalar, "expected a JSON array"), (not_saved, "not a datasets.save_to_disk folder")):
        with pytest.raises(UserError) as err:
            load_records(str(source))
        assert needle in str(err.value) and "\n" not in str(err.value), source
    shutil.rmtree(not_saved)
