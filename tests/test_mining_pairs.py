"""Off-topic mining pairs (attribution/examples.py ``offtopic_mining_pairs``): the relevant passage holds the
gold answer; the irrelevant one is another question's passage that holds neither this question's answer nor its
entity; seeded and deterministic."""
from benchmarks.english.benchmark import build_benchmark
from attribution.examples import entity_of, offtopic_mining_pairs
from neurorit.records import Passage, Record, parse_record, passage_has_answer
from tests.support.workspaces import mining_records


def _text_has(p: Passage, words) -> bool:
    return passage_has_answer(Passage(p.title, p.text), list(words))


def _english(n: int = 200) -> list[Record]:
    return build_benchmark(seed=1, n_questions=n)["train"]


def test_english_pairs_are_offtopic_and_hold_the_answer():
    records = _english()
    pairs = offtopic_mining_pairs(records, rng_seed=0)
    assert len(pairs) == len(records)  # every English record has a gold passage and plenty of donors
    donors = {id(p): r for r in records for p in r.ctxs}
    for record, rel, irr in pairs:
        assert _text_has(rel, record.answers)
        assert not _text_has(irr, record.answers)
        assert not _text_has(irr, [entity_of(record)])
        donor = donors[id(irr)]
        assert donor.id != record.id and entity_of(donor) != entity_of(record)
        assert irr.role == "gold"  # another question's answer-bearing passage


def test_pairs_are_seeded():
    records = _english()
    key = lambda pairs: [(r.id, rel.text, irr.text) for r, rel, irr in pairs]
    assert key(offtopic_mining_pairs(records, 5)) == key(offtopic_mining_pairs(records, 5))
    assert key(offtopic_mining_pairs(records, 5)) != key(offtopic_mining_pairs(records, 6))
    assert key(offtopic_mining_pairs(records, 5, limit=7)) == key(offtopic_mining_pairs(records, 5))[:7]


def _rec(rid: str, entity: str, answer: str, text: str) -> Record:
    return Record(rid, f"what about {entity}", [answer], [Passage("", text, has_answer=True)], meta={"entity": entity})


def test_only_valid_donor_is_found_and_bad_records_are_left_out():
    records = [_rec("a", "ann", "oslo", "ann lives in oslo"),
               _rec("b", "ann", "rome", "ann works in rome"),  # same entity as a: never a donor for a
               _rec("c", "bob", "lima", "bob lives in lima near oslo"),  # holds a's answer: never a donor for a
               _rec("d", "cid", "bern", "cid lives in bern"),  # the only valid donor for a
               Record("e", "no gold", ["doha"], [Passage("", "nothing here", has_answer=False)])]
    for seed in range(20):
        pairs = {r.id: (rel, irr) for r, rel, irr in offtopic_mining_pairs(records, seed)}
        assert set(pairs) == {"a", "b", "c", "d"}  # e has no answer-bearing passage
        assert pairs["a"][1].text == "cid lives in bern"
        assert pairs["b"][1].text in ("bob lives in lima near oslo", "cid lives in bern")
        assert pairs["d"][1].text != "cid lives in bern"


def test_records_without_entity_still_exclude_the_answer():
    records = [parse_record(row, f"row {i}") for i, row in enumerate(mining_records(40))]
    for record, rel, irr in offtopic_mining_pairs(records, 0):
        assert _text_has(rel, record.answers) and not _text_has(irr, record.answers) and irr.text.strip()
