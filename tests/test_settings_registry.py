"""The evaluation settings registry (neurorit/settings.py): a setting registered in a test is accepted by the
config, gets jobs in the evaluator with the passages it picks, and appears in the report's legend and order;
an unknown setting is refused in one line naming the registered ones."""
import os

import pytest

from neurorit import settings as registry
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder
from neurorit.records import load_records
from rag import report
from rag.evaluate import build_jobs
from tests.support.workspaces import eval_records, eval_tokenizer


@pytest.fixture
def last_passage_only(monkeypatch):
    """A new setting, ``last_ranked``: the lowest-ranked passage alone; removed again after the test."""
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    registry.setting("last_ranked", "the lowest-ranked passage alone")(lambda record, k: registry.ranked(record)[-1:])
    return "last_ranked"


def test_a_registered_setting_runs_through_config_evaluator_and_report(last_passage_only, tmp_path):
    cfg = load_config(None, ["--eval.settings", f"gold,{last_passage_only}"])
    assert cfg.eval.settings == ["gold", last_passage_only]
    records = load_records(eval_records(os.path.join(tmp_path, "test.jsonl"), 60))[:6]
    jobs, prompts, _ = build_jobs(records, cfg.eval.settings, PromptBuilder("compact"), eval_tokenizer(),
                                  "answer_only", 5, 256)
    assert [j["setting"] for j in jobs].count(last_passage_only) == len(records)
    mine = [p for j, p in zip(jobs, prompts) if j["setting"] == last_passage_only]
    gold = [p for j, p in zip(jobs, prompts) if j["setting"] == "gold"]
    assert len(mine) == len(gold) and any(a != b for a, b in zip(mine, gold))  # its own passages, not gold's
    assert registry.docs_for_setting(records[0], last_passage_only) == registry.ranked(records[0])[-1:]
    assert "`last_ranked` = the lowest-ranked passage alone" in registry.legend()
    stats = {"match": 0.5, "em": 0.5, "f1": 0.5, "match_ci95": [0.4, 0.6]}
    results = report.combine({"base": {"settings": {last_passage_only: stats, "gold": stats}}})
    assert list(results["methods"]["base"]["settings"]) == ["gold", last_passage_only]  # registry order
    assert "`last_ranked` = the lowest-ranked passage alone" in report.render_markdown(results)


def test_an_unknown_setting_is_refused_naming_the_registered_ones():
    with pytest.raises(UserError, match="'eval.settings': 'nosuch' is not allowed; use any of gold, top5"):
        load_config(None, ["--eval.settings", "gold,nosuch"])
    with pytest.raises(ValueError, match="registered twice"):
        registry.setting("gold", "again")(lambda record, k: [])
