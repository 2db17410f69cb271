"""Record loading in each accepted spelling, passage roles, selection by ``meta.kind``, and bad input naming file
and line."""
import json

import pytest

from neurorit.errors import UserError
from neurorit.records import (irrelevant_passages, load_records, noise_passages, relevant_passages, select_by_kind,
                              to_dataset)

DPR = {"id": "q1", "question": "who wrote it?", "answers": ["Ann Lee"],
       "ctxs": [{"title": "A", "text": "Ann Lee wrote it.", "score": 3.0, "has_answer": True},
                {"title": "B", "text": "Bob sang.", "score": 9.0, "has_answer": False},
                {"title": "C", "text": "Cats sleep.", "score": 1.0, "has_answer": False}]}
BERGEN = {"_id": "q2", "query": "capital of France", "golden_answers": ["Paris"],
          "contexts": [{"title": "France", "content": "The capital is Paris."}, {"content": "Rome is old."}]}
INSTRUCTRAG = {"question": "color of sky", "answers": "blue", "rationale": "The sky is blue.",
               "docs": [{"title": "Sky", "text": "The sky is blue."}, {"title": "Grass", "text": "Grass is green"}]}
FLASHRAG = {"id": 7, "question": "x?", "golden_answers": ["y"],
            "retrieved_docs": [{"contents": '"T"\nwhere y lives'}]}
POPQA = {"id": 1, "question": "q?", "possible_answers": '["a1", "a2"]', "ctxs": [{"title": "t", "text": "a2 here"}]}


def _write(tmp_path, rows, name="r.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(p)


def test_spellings(tmp_path):
    recs = load_records(_write(tmp_path, [DPR, BERGEN, INSTRUCTRAG, FLASHRAG, POPQA]))
    assert [r.id for r in recs[:2]] == ["q1", "q2"]
    assert recs[1].question == "capital of France" and recs[1].answers == ["Paris"]
    assert recs[1].ctxs[0].text == "The capital is Paris."
    assert recs[2].answers == ["blue"] and recs[2].evidence == "The sky is blue."
    assert recs[3].ctxs[0].title == "T" and recs[3].ctxs[0].text == "where y lives"
    assert recs[4].answers == ["a1", "a2"]
    assert len(to_dataset(recs)) == 5


def test_roles():
    from neurorit.records import parse_record
    r = parse_record(DPR, "x")
    assert relevant_passages(r)[0].title == "A"  # has_answer wins over score
    assert [p.title for p in irrelevant_passages(r, 2)] == ["C", "B"]  # bottom-ranked first
    assert [p.title for p in noise_passages(r, 5)] == ["B", "C"]
    b = parse_record(BERGEN, "y")  # no has_answer, no score: answer string decides
    assert relevant_passages(b)[0].title == "France"


def test_irrelevant_tops_up_from_other_questions():
    from neurorit.records import parse_record
    a = parse_record({"question": "q", "answers": ["z"], "ctxs": [{"text": "z is here"}]}, "a")
    b = parse_record(DPR, "b")
    got = irrelevant_passages(a, 2, pool=[a, b])
    assert len(got) == 2 and all("z" not in p.text for p in got)


@pytest.mark.parametrize("row, needle", [
    ('{"question": "q", "answers": ["a"], "ctxs": [}', "r.jsonl:2: malformed JSON"),
    ({"answers": ["a"], "ctxs": [{"text": "t"}]}, "r.jsonl:2: record has no question"),
    ({"question": "q", "answers": [], "ctxs": [{"text": "t"}]}, "r.jsonl:2: record has no answers"),
    ({"question": "q", "answers": ["a"], "ctxs": []}, "r.jsonl:2: record has an empty 'ctxs' list"),
    ({"question": "q", "answers": ["a"]}, "r.jsonl:2: record has no passages"),
    ({"question": "q", "answers": ["a"], "ctxs": [{"title": "t"}]}, "r.jsonl:2 ctxs[0]: passage has none"),
])
def test_bad_lines_name_file_and_line(tmp_path, row, needle):
    path = _write(tmp_path, [DPR, row])
    with pytest.raises(UserError) as err:
        load_records(path)
    assert needle in str(err.value)


def test_missing_file():
    with pytest.raises(UserError, match="records file not found: /no/such.jsonl"):
        load_records("/no/such.jsonl")


def test_select_by_kind_keeps_listed_kinds_capped_in_file_order(tmp_path):
    kinds = ["known", "fresh", "unknown", "fresh", "known", "fresh", "known"]
    rows = [dict(DPR, id=f"q{i}", meta={"kind": k}) for i, k in enumerate(kinds)]
    records = load_records(_write(tmp_path, rows))
    assert [r.id for r in select_by_kind(records, ["known", "fresh"], 2)] == ["q0", "q1", "q3", "q4"]
    assert [r.id for r in select_by_kind(records, ["known"])] == ["q0", "q4", "q6"]
    assert select_by_kind(records, [], -1) == records
