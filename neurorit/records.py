"""RAG records: the JSONL schema of docs/DESIGN.md §4, its common spellings, and per-question passage roles.

One question a line: ``id``, ``question``, ``answers`` (list), ``ctxs`` (list of ``title``, ``text``, optional
``score``, optional ``has_answer``), optional ``evidence``. DPR / BERGEN / InstructRAG / FlashRAG spellings are
accepted (``query``, ``golden_answers``, ``contexts``, ``passages``, ``content``, ``hasanswer``, ...); a field
that is null counts as absent (a table's missing cell). Chat-style rows (``messages`` with ``role`` /
``content``, or ShareGPT ``conversations`` with ``from`` / ``value``) give the question (the last user turn)
and, without an answers field, the answer (the assistant turn after it); their passages still come from a
passages field. The rows may come from JSONL, JSON, parquet, a ``datasets.save_to_disk`` folder or a Hub dataset
id (``neurorit.data_sources``); a CSV's list and object cells hold JSON text. ``data.columns`` maps a user's
column names to the record fields (``{question: q, answers: gold}``); ``training_records`` reads the training mix
(``data.train_files`` with ``data.train_weights``, else ``data.train_file``). A bad row raises ``UserError``
naming the file and line (or row). Records become a ``datasets.Dataset`` with ``to_dataset``.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

from neurorit.data_sources import rows as source_rows
from neurorit.errors import UserError
from neurorit.files import atomic_write_text
from neurorit.metrics import normalize as _norm

QUESTION_KEYS = ("question", "query", "input", "q")
ANSWER_KEYS = ("answers", "answer", "golden_answers", "gold_answers", "possible_answers", "label", "output")
CTXS_KEYS = ("ctxs", "contexts", "passages", "docs", "documents", "retrieved_docs")
TEXT_KEYS = ("text", "content", "contents", "passage", "paragraph_text")
ID_KEYS = ("id", "_id", "qid", "question_id")
EVIDENCE_KEYS = ("evidence", "rationale", "summary")
MESSAGES_KEYS = ("messages", "conversations", "conversation")
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "model", "bot")


@dataclass
class Passage:
    title: str
    text: str
    score: Optional[float] = None
    has_answer: Optional[bool] = None
    role: str = ""  # the benchmarks' passage role: gold, same_relation, same_entity, near_duplicate, random, ...


@dataclass
class Record:
    id: str
    question: str
    answers: list[str]
    ctxs: list[Passage]
    evidence: str = ""
    counterfactual_ctxs: list[Passage] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        return d


# ------------------------------------------------------------------------------------------------ answers
def passage_has_answer(p: Passage, answers: list[str]) -> bool:
    if p.has_answer is not None:
        return bool(p.has_answer)
    body = " " + _norm(p.title + " " + p.text) + " "
    return any(_norm(a) and f" {_norm(a)} " in body for a in answers)


# ------------------------------------------------------------------------------------------------ parsing
def _first(d: dict, keys: tuple[str, ...]):
    """The first of ``keys`` that ``d`` holds with a value (null = absent), as ``(key, value)``."""
    for k in keys:
        if d.get(k) is not None:
            return k, d[k]
    return None, None


def _turns(raw: dict, where: str) -> list[tuple[str, str]]:
    """``(role, text)`` of a chat-style row's turns (``messages`` or ShareGPT ``conversations``), or []."""
    key, turns = _first(raw, MESSAGES_KEYS)
    if key is None:
        return []
    if not isinstance(turns, list):
        raise UserError(f"{where}: '{key}' must be a list of turns, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}: {key}[{i}] must be an object with role and content (or from and value)")
        _, role = _first(turn, ("role", "from"))
        _, text = _first(turn, ("content", "value"))
        out.append((str(role or "").lower(), "" if text is None else str(text)))
    return out


def _from_turns(turns: list[tuple[str, str]]) -> tuple[Optional[str], Optional[str]]:
    """(the last user turn's text, the assistant turn after it) of a chat-style row."""
    users = [i for i, (role, _) in enumerate(turns) if role in USER_ROLES]
    if not users:
        return None, None
    last = users[-1]
    after = [text for role, text in turns[last + 1:] if role in ASSISTANT_ROLES]
    return turns[last][1], (after[0] if after else None)


def _parse_passage(raw: Any, where: str) -> Passage:
    if isinstance(raw, str):
        return Passage(title="", text=raw)
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a passage must be an object or a string, got {type(raw).__name__}")
    _, text = _first(raw, TEXT_KEYS)
    title = raw.get("title", "") or ""
    if text is None:
        raise UserError(f"{where}: passage has none of the text fields {', '.join(TEXT_KEYS)}")
    text = str(text)
    if not title and text.startswith('"') and '"\n' in text:  # FlashRAG "contents": '"Title"\ntext'
        title, text = text[1:].split('"\n', 1)
    score = raw.get("score")
    _, has = _first(raw, ("has_answer", "hasanswer"))
    return Passage(title=str(title), text=text, score=None if score is None else float(score),
                   has_answer=None if has is None else bool(has),
                   role=str(raw.get("role", raw.get("kind", ""))))  # "kind": files written before the rename


def _json_cell(raw: dict, key: str, where: str):
    """A list / object field as it is, or decoded from the JSON text a CSV cell holds."""
    value = raw.get(key)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise UserError(f"{where}: '{key}' is text that is not JSON; a table cell of passages holds a JSON list "
                        f"(e.g. [{{\"title\": \"...\", \"text\": \"...\"}}])") from None


def rename_columns(raw: Any, columns: dict, where: str) -> Any:
    """The row with the user's columns renamed to record fields (``data.columns``: field -> column)."""
    if not columns or not isinstance(raw, dict):
        return raw
    missing = [f"{column} (data.columns.{name})" for name, column in columns.items() if column not in raw]
    if missing:
        raise UserError(f"{where}: the row has no column {', '.join(missing)}; its columns are "
                        f"{', '.join(map(str, raw))}")
    renamed = {k: v for k, v in raw.items() if k not in columns.values()}
    return {**renamed, **{name: raw[column] for name, column in columns.items()}}


def parse_record(raw: Any, where: str) -> Record:
    """One JSON object -> Record, or a UserError naming ``where`` (file:line)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    raw = {**raw, **{k: _json_cell(raw, k, where) for k in (*CTXS_KEYS, "counterfactual_ctxs", "meta", *MESSAGES_KEYS)
                     if isinstance(raw.get(k), str)}}
    qkey, question = _first(raw, QUESTION_KEYS)
    akey, answers = _first(raw, ANSWER_KEYS)
    if qkey is None:
        question, reply = _from_turns(_turns(raw, where))
        answers = answers if akey is not None else ([reply] if reply else None)
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: record has no question (looked for {', '.join(QUESTION_KEYS)}, or a user turn "
                        f"in {' / '.join(MESSAGES_KEYS)})")
    if isinstance(answers, str):
        try:  # PopQA stores possible_answers as a JSON string
            decoded = json.loads(answers)
            answers = decoded if isinstance(decoded, list) else [answers]
        except json.JSONDecodeError:
            answers = [answers]
    if not isinstance(answers, list) or not [a for a in answers if str(a).strip()]:
        raise UserError(f"{where}: record has no answers (looked for {', '.join(ANSWER_KEYS)})")
    answers = [str(a) for a in answers if str(a).strip()]
    ckey, ctxs = _first(raw, CTXS_KEYS)
    if ctxs is None:
        raise UserError(f"{where}: record has no passages (looked for {', '.join(CTXS_KEYS)})")
    if not isinstance(ctxs, list) or not ctxs:
        raise UserError(f"{where}: record has an empty '{ckey}' list; every record needs retrieved passages")
    passages = [_parse_passage(c, f"{where} {ckey}[{i}]") for i, c in enumerate(ctxs)]
    cf = [_parse_passage(c, f"{where} counterfactual_ctxs[{i}]")
          for i, c in enumerate(raw.get("counterfactual_ctxs", []) or [])]
    _, rid = _first(raw, ID_KEYS)
    _, evidence = _first(raw, EVIDENCE_KEYS)
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    return Record(id=str(rid) if rid is not None else where, question=question.strip(), answers=answers,
                  ctxs=passages, evidence=str(evidence or ""), counterfactual_ctxs=cf, meta=dict(meta))


def read_lines(path: str, columns: Optional[dict] = None) -> Iterator[tuple[str, dict, Record]]:
    """``(line, raw object, parsed record)`` for every row of a records source (a JSONL, JSON, parquet or CSV
    file, a ``datasets.save_to_disk`` folder or a Hub dataset id; ``neurorit.data_sources``), ``line`` being the
    row as one JSON line (a JSONL file's own line), ``columns`` the ``data.columns`` renaming; a missing source
    or a bad row raises UserError naming it."""
    for where, raw, line in source_rows(path):
        yield line, raw, parse_record(rename_columns(raw, columns or {}, where), where)


def load_records(path: str, limit: int = -1, columns: Optional[dict] = None) -> list[Record]:
    """Read records from a file, folder or Hub dataset id (``read_lines``; at most ``limit`` when > 0). Bad rows
    raise UserError naming the file and line or row."""
    out: list[Record] = []
    for _, _, record in read_lines(path, columns):
        out.append(record)
        if 0 < limit <= len(out):
            break
    if not out:
        raise UserError(f"{path}: no records")
    return out


def training_records(data_cfg, limit: int = -1, seed: int = 0, weighted: bool = True) -> list[Record]:
    """The training mix: each of ``data.train_files`` with its ``data.train_weights`` (weight w: every record
    int(w) times, plus a seeded sample of the fraction left; each once without ``weighted``), in file order;
    without ``train_files``, ``data.train_file`` alone, exactly as ``load_records`` reads it. At most ``limit``
    records when > 0."""
    if not data_cfg.train_files:
        return load_records(data_cfg.train_file, limit, data_cfg.columns)
    out: list[Record] = []
    weights = (weighted and data_cfg.train_weights) or [1.0] * len(data_cfg.train_files)
    for i, (path, weight) in enumerate(zip(data_cfg.train_files, weights)):
        records = load_records(path, -1, data_cfg.columns)
        extra = random.Random(seed * 1_000_003 + i).sample(records, round((weight % 1) * len(records)))
        out += records * int(weight) + extra
    return out[:limit] if limit > 0 else out


def mining_records(cfg) -> list[Record]:
    """The records mining (and ``diagnose``) draw their pairs from: ``mining.file`` when set, else the training
    files, each record once."""
    if cfg.mining.file:
        return load_records(cfg.mining.file, -1, cfg.data.columns)
    return training_records(cfg.data, -1, cfg.runtime.seed, weighted=False)


def select_by_kind(records: list[Record], kinds: list[str], max_per_kind: int = -1) -> list[Record]:
    """The records whose ``meta.kind`` is in ``kinds`` (all when empty), at most ``max_per_kind`` of each kind
    (no cap when < 0), in file order."""
    taken: dict[str, int] = {}
    out = []
    for rec in records:
        kind = str(rec.meta.get("kind", ""))
        if kinds and kind not in kinds:
            continue
        if 0 <= max_per_kind <= taken.get(kind, 0):
            continue
        taken[kind] = taken.get(kind, 0) + 1
        out.append(rec)
    return out


def write_records(records: list[Record], path: str) -> None:
    atomic_write_text(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))


def to_dataset(records: list[Record]):
    """Records as a ``datasets.Dataset`` (one row per record, passages nested)."""
    import datasets

    return datasets.Dataset.from_list([r.to_json() for r in records])


# ------------------------------------------------------------------------------------------ passage roles
def ranked(record: Record) -> list[Passage]:
    """Passages best first: by score when every passage has one, else in file order (retrieval order)."""
    if record.ctxs and all(p.score is not None for p in record.ctxs):
        return sorted(record.ctxs, key=lambda p: -p.score)
    return list(record.ctxs)


def relevant_passages(record: Record) -> list[Passage]:
    """Passages holding an answer (has_answer, or the answer string); else the top-ranked one."""
    rel = [p for p in ranked(record) if passage_has_answer(p, record.answers)]
    return rel if rel else ranked(record)[:1]


def irrelevant_passages(record: Record, k: int, pool: Optional[list[Record]] = None,
                        rng: Optional[random.Random] = None) -> list[Passage]:
    """``k`` passages without the answer: bottom-ranked of this record, topped up from other questions."""
    own = [p for p in reversed(ranked(record)) if not passage_has_answer(p, record.answers)]
    out = own[:k]
    if len(out) < k and pool:
        rng = rng or random.Random(0)
        tries = 0
        while len(out) < k and len(pool) > 1 and tries < 50 * k:
            tries += 1
            other = rng.choice(pool)
            if other.id == record.id:
                continue
            cand = rng.choice(other.ctxs)
            if not passage_has_answer(cand, record.answers) and cand not in out:
                out.append(cand)
    return out


def noise_passages(record: Record, k: int) -> list[Passage]:
    """Top-``k`` after removing every passage that holds an answer (the all-noise setting)."""
    return [p for p in ranked(record) if not passage_has_answer(p, record.answers)][:k]
