"""The one training-record schema, and JSONL/Parquet reading and writing with validation.

Every source (public sets, synthetic data, mined negatives) ends up as :class:`Record` rows. Reading validates each
row: in strict mode the first bad row raises :class:`RecordError` naming the file, line and field; in lenient mode bad
rows are dropped and counted per reason in a :class:`ReadReport`, never silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from embedpipe.encoder.instructions import task_type as parse_task_type

log = logging.getLogger(__name__)

TEXT_FIELDS = ("query",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class Record(BaseModel):
    """One training example: a query, its positive(s) and (optionally mined) hard negatives."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str
    task_type: str = "retrieval"
    instruction: str | None = None
    query: str
    positives: list[str]
    negatives: list[str] = []
    negative_scores: list[float] | None = None
    positive_scores: list[float] | None = None
    language: str = "en"
    source: str = "unknown"
    generator: str | None = None
    positive_ids: list[str] | None = None
    negative_ids: list[str] | None = None

    @field_validator("id")
    @classmethod
    def _id_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty id")
        return value

    @field_validator("task_type")
    @classmethod
    def _known_task_type(cls, value: str) -> str:
        return parse_task_type(value).value

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty text")
        return value

    @field_validator("positives")
    @classmethod
    def _positives_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one positive is required")
        for i, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"empty text at index {i}")
        return value

    @field_validator("negatives")
    @classmethod
    def _negatives_not_empty(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"empty text at index {i}")
        return value

    @model_validator(mode="after")
    def _parallel_lists(self) -> "Record":
        for name, texts in (("negative_scores", self.negatives), ("negative_ids", self.negatives),
                            ("positive_scores", self.positives), ("positive_ids", self.positives)):
            values = getattr(self, name)
            if values is not None and len(values) != len(texts):
                base = "negatives" if name.startswith("negative") else "positives"
                raise ValueError(f"{name} has {len(values)} entries but {base} has {len(texts)}")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RecordError(ValueError):
    """A row that does not validate; ``str()`` names the file, the line (or Parquet row) and the field."""

    def __init__(self, path: str, line: int, field_name: str | None, reason: str, message: str):
        self.path, self.line, self.field, self.reason = str(path), line, field_name, reason
        where = f"{path}:{line}" + (f": field {field_name!r}" if field_name else "")
        super().__init__(f"{where}: {message}")


@dataclass
class ReadReport:
    """What a lenient read dropped: counts per reason, and the first few messages as examples."""

    path: str
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def drop(self, err: RecordError) -> None:
        self.dropped[err.reason] += 1
        if len(self.examples) < 20:
            self.examples.append(str(err))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "kept": self.kept, "dropped": dict(self.dropped),
                "dropped_total": sum(self.dropped.values()), "examples": self.examples}


def _reason_for(err: ValidationError) -> tuple[str | None, str, str]:
    """(field, reason key, message) for the first pydantic error of a row."""
    first = err.errors()[0]
    loc = first["loc"]
    field_name = str(loc[0]) if loc else None
    msg = first["msg"]
    kind = first["type"]
    if kind == "missing":
        reason = "missing_field"
        msg = "missing required field"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
        msg = "unknown field"
    elif "empty text" in msg or "empty id" in msg or "at least one positive" in msg:
        reason = "empty_text"
    elif field_name == "task_type":
        reason = "bad_task_type"
    elif "entries but" in msg:
        reason = "length_mismatch"
    else:
        reason = "bad_value"
    if len(loc) > 1:
        msg = f"{msg} (at {'.'.join(str(p) for p in loc)})"
    return field_name, reason, msg.replace("Value error, ", "")


SDG_TASKS = ("query_generation", "retrieval_triplet", "classification", "sts", "bitext")
_SDG_ID = re.compile(rf"-({'|'.join(SDG_TASKS)})-\d+$")


def kind_of(record: Record) -> str:
    """What a record counts as in the manifests: its SDG task for a generated record (the id SDG gives it ends in
    ``-<task>-<n>``: query generation and triplets are both retrieval records), else its task type."""
    if record.generator:
        match = _SDG_ID.search(record.id)
        if match:
            return f"sdg:{match.group(1)}"
    return record.task_type


def _trusted(row: Any, path: str, line: int) -> Record:
    """A row a step of this pipeline wrote (validated when it was made): built without validating its fields again;
    only its shape is checked, so a foreign or truncated file still fails naming the file, line and field."""
    if not isinstance(row, dict):
        raise RecordError(path, line, None, "not_an_object", f"expected a JSON object, got {type(row).__name__}")
    for name in ("id", "query", "positives"):
        if name not in row:
            raise RecordError(path, line, name, "missing_field", "missing required field")
    unknown = set(row) - _FIELDS
    if unknown:
        raise RecordError(path, line, sorted(unknown)[0], "unknown_field", "unknown field")
    return Record.model_construct(**row)


def validate_row(row: Any, path: str, line: int) -> Record:
    """One decoded row -> Record, or RecordError naming path, line and field."""
    if not isinstance(row, dict):
        raise RecordError(path, line, None, "not_an_object", f"expected a JSON object, got {type(row).__name__}")
    try:
        return Record.model_validate(row)
    except ValidationError as err:
        field_name, reason, msg = _reason_for(err)
        raise RecordError(path, line, field_name, reason, msg) from None


# ---------------------------------------------------------------------------------------------------------- reading


def _local_copy(path: str | Path) -> tuple[Path, str | None]:
    """A local path for ``path``; ``s3://`` objects are downloaded to a temporary file (removed by the caller)."""
    from embedpipe import storage

    text = str(path)
    if storage.is_remote(text):
        tmpdir = tempfile.mkdtemp(prefix="embedpipe-records-")
        local = Path(tmpdir) / Path(text.split("://", 1)[1]).name
        storage.download(text, str(local))
        return local, tmpdir
    return Path(path), None


def _iter_jsonl_rows(path: Path, display: str) -> Iterator[tuple[int, Any] | RecordError]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RecordError(display, line_no, None, "not_utf8", f"not valid UTF-8 (byte {err.start})")
                continue
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as err:
                yield RecordError(display, line_no, None, "malformed_json", f"malformed JSON: {err.msg} (column {err.colno})")


def _iter_parquet_rows(path: Path, display: str) -> Iterator[tuple[int, Any] | RecordError]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    row_no = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, {k: v for k, v in row.items() if v is not None}


def iter_records(path: str | Path, lenient: bool = False, report: ReadReport | None = None,
                 trusted: bool = False) -> Iterator[Record]:
    """Stream validated records from a JSONL or Parquet file (local or ``s3://``); duplicate ids are errors too.

    ``trusted``: the file was written by a step of this pipeline from records validated when they were made (the data
    build's, SDG's or mining's output), so rows are not validated field by field again (:func:`_trusted`)."""
    display = str(path)
    report = report if report is not None else ReadReport(display)
    local, tmpdir = _local_copy(path)
    try:
        if not local.is_file():
            raise FileNotFoundError(f"records file {display} does not exist")
        rows = _iter_parquet_rows(local, display) if local.suffix in PARQUET_SUFFIXES else _iter_jsonl_rows(local, display)
        seen: set[str] = set()
        for item in rows:
            report.rows += 1
            try:
                if isinstance(item, RecordError):
                    raise item
                line_no, row = item
                record = (_trusted if trusted else validate_row)(row, display, line_no)
                if record.id in seen:
                    raise RecordError(display, line_no, "id", "duplicate_id", f"duplicate id {record.id!r}")
                seen.add(record.id)
            except RecordError as err:
                if not lenient:
                    raise
                report.drop(err)
                continue
            report.kept += 1
            yield record
    finally:
        if tmpdir:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
    if report.dropped:
        log.warning("%s: dropped %d of %d rows: %s", display, sum(report.dropped.values()), report.rows,
                    dict(report.dropped))


def read_records(path: str | Path, lenient: bool = False, report: ReadReport | None = None,
                 trusted: bool = False) -> list[Record]:
    """All records of a JSONL/Parquet file. Strict by default; ``lenient=True`` drops bad rows into ``report``."""
    return list(iter_records(path, lenient=lenient, report=report, trusted=trusted))


def read_records_with_report(path: str | Path, lenient: bool = True) -> tuple[list[Record], ReadReport]:
    report = ReadReport(str(path))
    return read_records(path, lenient=lenient, report=report), report


# ---------------------------------------------------------------------------------------------------------- writing

PARQUET_SCHEMA_FIELDS = list(Record.model_fields)
_FIELDS = set(PARQUET_SCHEMA_FIELDS)


def _parquet_schema():
    import pyarrow as pa

    strings = pa.list_(pa.string())
    floats = pa.list_(pa.float64())
    types = {"negative_scores": floats, "positive_scores": floats, "positives": strings, "negatives": strings,
             "positive_ids": strings, "negative_ids": strings}
    return pa.schema([(name, types.get(name, pa.string())) for name in PARQUET_SCHEMA_FIELDS])


def _write_rows(rows: Iterable[dict], path: Path, parquet: bool) -> int:
    count = 0
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _parquet_schema()
        with pq.ParquetWriter(path, schema) as writer:
            batch: list[dict] = []
            for row in rows:
                batch.append(row)
                count += 1
                if len(batch) >= 8192:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch or count == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count


def write_records(records: Iterable[Record | dict], path: str | Path) -> int:
    """Write records as JSONL (or Parquet by suffix), local or ``s3://``; atomic for local files. Returns the count."""
    from embedpipe import storage

    text = str(path)
    remote = storage.is_remote(text)
    if remote:
        tmpdir = tempfile.mkdtemp(prefix="embedpipe-records-")
        local = Path(tmpdir) / Path(text.split("://", 1)[1]).name
    else:
        local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    rows = (r.to_json() if isinstance(r, Record) else Record.model_validate(r).to_json() for r in records)
    try:  # a producer that fails part-way (bad record, mining error) leaves neither output nor partial file
        count = _write_rows(rows, partial, parquet=local.suffix in PARQUET_SUFFIXES)
    except BaseException:
        partial.unlink(missing_ok=True)
        if remote:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    os.replace(partial, local)
    if remote:
        import shutil

        try:
            storage.upload(str(local), text)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return count


def write_jsonl(rows: Iterable[dict], path: str | Path) -> int:
    """Plain JSONL writer for non-record files (corpus, BEIR queries); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with open(partial, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(partial, path)
    return count


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Rows of a plain JSONL file, with errors that name the file, the line and a ``required`` field it lacks."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}:{line_no}: {err}") from None
            if required:
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                missing = [name for name in required if row.get(name) is None]
                if missing:
                    raise ValueError(f"{path}:{line_no}: field '{missing[0]}' is missing")
            yield row


@dataclass
class Loaded:
    """What one source produced."""

    records: list[Record] = field(default_factory=list)
    documents: dict[str, str] = field(default_factory=dict)  # corpus id -> text
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n
