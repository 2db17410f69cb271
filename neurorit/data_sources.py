"""Where records come from: rows of a JSONL, JSON, parquet or CSV file, a ``datasets.save_to_disk`` folder or a
Hugging Face Hub dataset id (CSV and Hub ids through ``datasets.load_dataset``, which honours ``HF_HUB_OFFLINE``
and its cache). A CSV cell is text: a list or object column (``answers``, ``ctxs``) holds JSON, which
``neurorit.records`` decodes.

``rows(source)`` yields ``(where, raw object, text line)`` per row; ``where`` names the row for error messages
(``file.jsonl:12`` for a line, ``file.parquet row 3`` / ``org/name:train row 3`` for a table row, counted from 0
as ``dataset[i]`` counts) and the text line is the row as one JSON line (the file's own line for JSONL, which
``rag/write_evidence.py`` keeps byte for byte). A source with several splits takes ``:<split>`` after its name
(``org/name:test``, ``folder:validation``); one with a single split needs none. Every failure is one
``UserError`` line naming the source. ``source_digest(source)`` is the sha256 of a local source's bytes (a model
card records it); a Hub dataset id has none.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterator

from neurorit.errors import UserError

Row = tuple[str, dict, str]
FILE_KINDS = (".jsonl", ".json", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def rows(source: str) -> Iterator[Row]:
    """Every row of ``source`` (see the module docstring), in order."""
    location, split = _split_source(source)
    if os.path.isdir(location):
        data = _load_from_disk(location)
        if split and not hasattr(data, "keys"):  # a saved Dataset, not a DatasetDict
            raise UserError(f"records folder {location} holds one dataset without splits; drop ':{split}'")
        return _dataset_rows(data, location, split)
    if os.path.isfile(location):
        if split:
            raise UserError(f"records file {location}: a file has no splits; drop ':{split}'")
        ext = os.path.splitext(location)[1].lower()
        if ext == ".parquet":
            return _table_rows(_read_parquet(location), location)
        if ext == ".json":
            return _json_rows(location)
        if ext == ".csv":
            return _dataset_rows(_load_csv(location), location, "")
        return _jsonl_rows(location)
    if _looks_like_hub_id(location):
        return _dataset_rows(_load_hub(location, split), location, split)
    raise UserError(f"records file not found: {source}")


def source_digest(source: str) -> str | None:
    """``sha256:<hex>`` of a local file, or of a folder's files (their relative paths and bytes, in name order);
    None for a Hub dataset id (or a source that is not there)."""
    location, _ = _split_source(source)
    if os.path.isfile(location):
        files = [(os.path.basename(location), location)]
    elif os.path.isdir(location):
        files = sorted((os.path.relpath(os.path.join(d, f), location), os.path.join(d, f))
                       for d, _, names in os.walk(location) for f in names)
    else:
        return None
    digest = hashlib.sha256()
    for name, path in files:
        if len(files) > 1:
            digest.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _split_source(source: str) -> tuple[str, str]:
    """``(location, split)``: ``name:split`` unless ``source`` itself exists (a path may hold a colon)."""
    if os.path.exists(source) or ":" not in source:
        return source, ""
    location, _, split = source.rpartition(":")
    return location, split


def _looks_like_hub_id(location: str) -> bool:
    ext = os.path.splitext(location)[1].lower()
    return bool(_HUB_ID.match(location)) and ext not in FILE_KINDS and not os.path.isabs(location)


def _row_json(raw) -> str:
    return json.dumps(raw, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------------------------- files
def _jsonl_rows(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            yield where, raw, line.rstrip("\r\n")


def _json_rows(path: str) -> Iterator[Row]:
    """A JSON array of records (or ``{"data": [...]}``); a ``.json`` file holding JSON lines reads as JSONL."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line under a .json name (datasets' to_json writes these)
            yield from _jsonl_rows(path)
            return
        raise UserError(f"{path}: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of records (or JSON lines), got a {type(data).__name__}")
    for i, raw in enumerate(data):
        yield f"{path} row {i}", raw, _row_json(raw)


def _read_parquet(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow's errors for a damaged or non-parquet file are of several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{path}: not a readable parquet file ({first})") from None


def _table_rows(table, where: str) -> Iterator[Row]:
    for i, raw in enumerate(table.to_pylist()):
        yield f"{where} row {i}", raw, _row_json(raw)


# -------------------------------------------------------------------------------------------- datasets
def _load_from_disk(folder: str):
    import datasets

    try:
        return datasets.load_from_disk(folder)
    except FileNotFoundError:
        raise UserError(f"records folder {folder}: not a datasets.save_to_disk folder (no dataset_info.json / "
                        f"dataset_dict.json); give a JSONL, JSON or parquet file, or such a folder") from None


def _load_csv(path: str):
    import datasets

    try:
        return datasets.load_dataset("csv", data_files=path, split="train")
    except Exception as err:  # pandas' and datasets' parse errors are of several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{path}: not a readable CSV file ({first})") from None


def _load_hub(repo_id: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(repo_id, split=split or None)
    except ConnectionError as err:
        raise UserError(f"records {repo_id}: not a local file, and the Hub dataset is not in the datasets cache "
                        f"while the Hub cannot be reached ({str(err).splitlines()[0]}); load it once where the Hub "
                        f"is reachable (the cache is HF_DATASETS_CACHE), or give a local file") from None
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as err:
        raise UserError(f"records {repo_id}: not a local file and not a dataset on the Hugging Face Hub "
                        f"({str(err).splitlines()[0]})") from None
    except ValueError as err:  # an unknown split
        raise UserError(f"records {repo_id}:{split}: {str(err).splitlines()[0]}") from None


def _dataset_rows(data, location: str, split: str) -> Iterator[Row]:
    """Rows of a ``Dataset``, or of one split of a ``DatasetDict`` (``split``, or its only one)."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        if not split and len(names) == 1:
            split = names[0]
        if split not in data:
            asked = f"has no split {split!r}" if split else "has several splits"
            raise UserError(f"records {location} {asked}; name one as {location}:<split>, one of "
                            f"{', '.join(names)}")
        data = data[split]
    where = f"{location}:{split}" if split else location
    for i, raw in enumerate(data):
        yield f"{where} row {i}", raw, _row_json(raw)
