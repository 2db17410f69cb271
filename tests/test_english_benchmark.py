"""The English benchmark (benchmarks/english): deterministic, disjoint splits, the records schema, has_answer
right, every setting available; the closed-book probe labels and caches (a tiny random chat model, no download)."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from benchmarks.english.benchmark import build_benchmark, fact_key, probe_known, split_facts, write_benchmark
from benchmarks.english.facts import NEAR_DUPLICATE_KINDS, QUESTIONS, REAL_RELATIONS, passage_title, real_facts
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.metrics import normalize
from neurorit.records import Passage, load_records, passage_has_answer
from neurorit.settings import docs_for_setting, has_setting, names as setting_names

N = 240  # questions over all splits: train 120, dev 36, test 84


@pytest.fixture(scope="module")
def splits():
    return build_benchmark(seed=3, n_questions=N)


def _digest(splits) -> str:
    return hashlib.sha256(repr([r.to_json() for s in splits.values() for r in s]).encode()).hexdigest()


def test_real_facts_come_from_the_packages():
    facts = real_facts()
    by = {fact_key(f): f.value for f in facts}
    assert by["capital|France"] == "Paris" and by["capital|Japan"] == "Tokyo"
    assert by["element|Au"] == "gold" and by["element|Fe"] == "iron" and by["demonym|France"] == "French"
    assert set(Counter(f.relation for f in facts)) == set(REAL_RELATIONS) and len(facts) > 400
    for f in facts:  # never an answer the question already spells out
        assert normalize(f.value) not in normalize(QUESTIONS[f.relation].format(e=f.entity))


def test_more_country_facts_add_no_group_and_keep_older_splits():
    facts = real_facts()
    by = {fact_key(f): f.value for f in facts}
    assert by["capital_of|Paris"] == "France" and by["city_country|Yokohama"] == "Japan"
    assert by["language|Brazil"] == "Portuguese" and by["currency|Japan"] == "Yen"
    older = [f for f in facts if f.relation in ("capital", "demonym", "element")]
    assert facts[:len(older)] == older  # appended: the older facts keep their order
    assert {f.group for f in facts} == {f.group for f in older}
    assert split_facts(older, 0) == {s: [f for f in fs if f in set(older)] for s, fs in split_facts(facts, 0).items()}
    assert len({fact_key(f) for f in facts}) == len(facts)  # no question asked of two entities (Kingston)
    counts = Counter(f.relation for f in facts)
    assert min(counts[r] for r in ("capital_of", "city_country", "language", "currency")) > 50
    for f in facts:
        assert f.source and NEAR_DUPLICATE_KINDS[f.relation]
        title = passage_title(f, f.value)
        assert normalize(f.value) not in normalize(title) or f.relation == "element", f  # an element's title is its name


def test_moving_a_share_from_train_to_dev_keeps_the_test_entities():
    facts = real_facts()
    before, after = split_facts(facts, 0), split_facts(facts, 0, (0.4, 0.25, 0.35))
    assert {f.group for f in after["test"]} == {f.group for f in before["test"]}
    assert len(after["dev"]) > 1.5 * len(before["dev"]) and len(after["train"]) < len(before["train"])
    with pytest.raises(UserError, match="benchmark_fractions"):
        load_config(None, ["--data.benchmark_fractions", "0.5,0.5,0.5"])


def test_deterministic(splits):
    assert _digest(build_benchmark(seed=3, n_questions=N)) == _digest(splits)
    assert _digest(build_benchmark(seed=4, n_questions=N)) != _digest(splits)


def test_sizes_and_kinds(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 120, "dev": 36, "test": 84}
    for recs in splits.values():
        kinds = Counter(r.meta["kind"] for r in recs)
        assert kinds["fresh"] == kinds["real"] == len(recs) // 2  # no probe -> "real"


def test_splits_share_no_question_instance(splits):
    seen: dict[str, str] = {}
    entities: dict[str, str] = {}
    for split, recs in splits.items():
        for r in recs:
            key = (r.question, r.answers[0])
            assert seen.setdefault(key, split) == split, key
            if r.meta["kind"] != "fresh":  # a real entity (country, element) belongs to one split
                group = r.meta["entity"] if r.meta["relation"] != "element" else r.answers[0]
                assert entities.setdefault(group, split) == split
    fresh = [r.meta["entity"] for recs in splits.values() for r in recs if r.meta["kind"] == "fresh"]
    assert len(fresh) == len(set(fresh))  # one made-up entity per fresh question


def test_schema_round_trip_and_settings(tmp_path, splits):
    from neurorit.records import write_records

    path = tmp_path / "dev.jsonl"
    write_records(splits["dev"], str(path))
    back = load_records(str(path))
    assert [r.to_json() for r in back] == [r.to_json() for r in splits["dev"]]
    for r in back:
        assert r.id and r.question.endswith("?") and len(r.answers) == 1 and r.evidence
        assert all(p.score is not None for p in r.ctxs)
        assert [p.score for p in r.ctxs] == sorted((p.score for p in r.ctxs), reverse=True)
        assert len(r.ctxs) >= 7 and sum(p.role == "gold" for p in r.ctxs) == 1
        assert {"kind", "known", "relation", "entity", "counterfactual_answer"} <= set(r.meta)
        assert normalize(r.answers[0]) in normalize(" ".join(p.text for p in docs_for_setting(r, "gold")))
        assert len(docs_for_setting(r, "noise_only", 5)) == 5 and has_setting(r, "counterfactual")
        for s in setting_names():
            docs_for_setting(r, s, 5)


def test_has_answer_is_right(splits):
    for recs in splits.values():
        for r in recs:
            for p in r.ctxs + r.counterfactual_ctxs:
                by_text = passage_has_answer(Passage(p.title, p.text), r.answers)
                assert p.has_answer == by_text == (p.role == "gold"), (r.id, p)
            cf = r.counterfactual_ctxs[0]
            assert normalize(r.meta["counterfactual_answer"]) in normalize(cf.text) and r.meta["entity"] in cf.text
            assert normalize(r.meta["counterfactual_answer"]) != normalize(r.answers[0])


def test_distractors_have_the_gold_shapes(splits):
    kinds = Counter(p.role for recs in splits.values() for r in recs for p in r.ctxs)
    for k in ("gold", "same_relation", "same_entity", "near_duplicate", "random"):
        assert kinds[k] > 0, k
    for r in splits["train"]:
        gold = next(p for p in r.ctxs if p.role == "gold")
        near = [p for p in r.ctxs if p.role == "near_duplicate"]
        sentences = re.compile(r"[.!?](?:\s|$)")
        assert near and len(sentences.findall(near[0].text)) == len(sentences.findall(gold.text.replace(r.answers[0], "X")))
        assert not re.search(r"(?<!\w)" + re.escape(r.meta["entity"]) + r"(?!\w)", near[0].text)


def _tiny_chat_model(path: str):
    """A random 2-layer Llama with a byte-level chat tokenizer, saved like a checkpoint."""
    import torch
    import transformers as tf

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                     pad_token="<|im_end|>")
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                         "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                         "{% endif %}")
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def test_probe_labels_and_caches(tmp_path, monkeypatch, capfd):
    import benchmarks.english.benchmark as bench

    model = tmp_path / "model"
    _tiny_chat_model(str(model))
    facts = real_facts()[:6]
    cache = tmp_path / "probe_cache.json"
    labels = probe_known(str(model), facts, str(cache), batch_size=8)
    prompts = sum(len(bench.probe_prompts(f)) for f in facts)
    err = capfd.readouterr().err  # the progress bar of the probe, finished
    assert "closed-book probe: 100%" in err and f"{prompts}/{prompts} [" in err
    assert set(labels) == {fact_key(f) for f in facts} and cache.is_file()
    stored = json.loads(cache.read_text())
    assert all(len(v["outputs"]) == 1 and isinstance(v["known"], bool) for v in stored["facts"].values())

    def boom(*a, **k):
        raise AssertionError("the probe ran again instead of reading its cache")

    monkeypatch.setattr(bench, "_run_probe", boom)
    assert probe_known(str(model), facts, str(cache)) == labels
    # labels become meta.kind known / unknown
    recs = build_benchmark(seed=3, n_questions=40, labels={fact_key(f): True for f in real_facts()})
    kinds = Counter(r.meta["kind"] for s in recs.values() for r in s)
    assert kinds["known"] == 20 and kinds["fresh"] == 20 and "real" not in kinds


def test_cli_without_probe(tmp_path):
    from neurorit.config import load_config

    cfg = load_config("configs/smollm2.yaml", ["--data.train_file", str(tmp_path / "train.jsonl"),
                                               "--data.dev_file", str(tmp_path / "dev.jsonl"),
                                               "--data.test_file", str(tmp_path / "test.jsonl"),
                                               "--data.benchmark_questions", "40"])
    paths = write_benchmark(cfg, probe=False)
    assert cfg.data.benchmark_fractions == [0.4, 0.25, 0.35]  # the SmolLM2 config's: a larger dev
    assert [len(load_records(paths[s])) for s in ("train", "dev", "test")] == [16, 10, 14]


def test_probe_without_model_is_a_clear_error(tmp_path):
    from neurorit.errors import UserError

    with pytest.raises(UserError, match="make real-model"):
        probe_known(str(tmp_path / "missing"), real_facts()[:2], str(tmp_path / "c.json"))
