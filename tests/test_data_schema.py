"""Record schema: JSONL/Parquet round trips, and every validation error named by file, line and field."""

from __future__ import annotations

import json

import pytest

from embedpipe.data.schema import Record, RecordError, read_records, read_records_with_report, write_records

GOOD = {"id": "r1", "task_type": "retrieval", "instruction": "Find it", "query": "what is a list",
        "positives": ["A list is a mutable sequence."], "negatives": ["A tuple is immutable."],
        "negative_scores": [0.42], "language": "en", "source": "unit"}


def _jsonl(tmp_path, lines: list[bytes | str | dict]):
    path = tmp_path / "records.jsonl"
    with open(path, "wb") as fh:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            fh.write(line if isinstance(line, bytes) else line.encode())
            fh.write(b"\n")
    return path


def _with(**changes):
    row = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            row.pop(key)
        else:
            row[key] = value
    return row


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_keeps_every_field(tmp_path, suffix):
    records = [Record(**GOOD), Record(id="r2", query="q", positives=["p1", "p2"], task_type="STS",
                                      positive_ids=["d1", "d2"], generator="smollm2")]
    path = tmp_path / f"out{suffix}"
    assert write_records(records, path) == 2
    back = read_records(path)
    assert back == records
    assert back[1].task_type == "sts"  # task types are normalised on the way in
    assert back[0].negative_scores == pytest.approx([0.42])


CASES = [
    ("malformed_json", '{"id": "x", "query": ', 2, None),
    ("missing_field", _with(id="x", query=...), 2, "query"),
    ("empty_text", _with(id="x", query="   "), 2, "query"),
    ("empty_text", _with(id="x", positives=["ok", ""]), 2, "positives"),
    ("empty_text", _with(id="x", positives=[]), 2, "positives"),
    ("duplicate_id", _with(), 2, "id"),
    ("bad_task_type", _with(id="x", task_type="regression"), 2, "task_type"),
    ("not_utf8", b'{"id": "x", "query": "caf\xe9", "positives": ["p"]}', 2, None),
    ("length_mismatch", _with(id="x", negative_scores=[0.1, 0.2]), 2, None),
    ("unknown_field", _with(id="x", positivez=["p"]), 2, "positivez"),
    ("not_an_object", "[1, 2]", 2, None),
]


@pytest.mark.parametrize("reason,bad,line,field", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_strict_errors_name_file_line_and_field(tmp_path, reason, bad, line, field):
    path = _jsonl(tmp_path, [GOOD, bad, _with(id="r3")])
    with pytest.raises(RecordError) as info:
        read_records(path)
    err = info.value
    assert (err.reason, err.line, err.field) == (reason, line, field)
    assert str(path) in str(err) and f":{line}" in str(err)
    if field:
        assert repr(field) in str(err)


def test_lenient_drops_and_counts_every_reason(tmp_path):
    rows = [GOOD] + [c[1] for c in CASES] + [_with(id="ok2")]
    path = _jsonl(tmp_path, rows)
    records, report = read_records_with_report(path, lenient=True)
    # the rows with id "x" that are valid after the first one ("duplicate_id" case repeats r1)
    assert [r.id for r in records] == ["r1", "ok2"]
    assert report.rows == len(rows)
    assert report.kept == 2
    expected = {}
    for reason, *_ in CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.dropped) == expected
    assert sum(report.dropped.values()) + report.kept == report.rows  # nothing dropped silently
    assert report.to_dict()["examples"][0].startswith(f"{path}:2")


def test_parquet_rows_are_validated_with_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": "a", "query": "q", "positives": ["p"]},
        {"id": "b", "query": "", "positives": ["p"]},
        {"id": "c", "query": "q", "positives": None},
    ]), path)
    with pytest.raises(RecordError, match=r"bad.parquet:2: field 'query': empty text"):
        read_records(path)
    records, report = read_records_with_report(path)
    assert [r.id for r in records] == ["a"]
    assert dict(report.dropped) == {"empty_text": 1, "missing_field": 1}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a real S3-protocol peer for embedpipe.storage)."""
    moto_server = pytest.importorskip("moto.server")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("EMBEDPIPE_S3_SECURE", "false")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def test_s3_round_trip(s3_env):
    """Records written to and read from s3:// through embedpipe.storage."""
    records = [Record(**GOOD), Record(id="r2", query="q2", positives=["p"])]
    for name in ("records.jsonl", "records.parquet"):
        write_records(records, f"s3://data-test/run1/{name}")
        assert read_records(f"s3://data-test/run1/{name}") == records


def test_build_to_s3(s3_env, tmp_path):
    """The data build publishes its whole folder (records, corpus, eval tasks, manifest) to an s3:// prefix."""
    from embedpipe import storage
    from embedpipe.data.build import build_training_data
    from embedpipe.recipe import load_recipe, recipes_dir

    manifest = build_training_data(load_recipe(recipes_dir() / "local.yaml").data, "s3://data-test/build1")
    local = storage.download("s3://data-test/build1", tmp_path / "copy")
    assert len(read_records(local / "records.jsonl")) == manifest["records"] > 0
    assert json.loads((local / "eval" / "tasks.json").read_text())[0]["name"] == "PydocRetrieval"
    assert (local / "eval" / "pydoc-retrieval" / "qrels" / "test.tsv").is_file()


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_a_producer_failing_midway_leaves_no_output(tmp_path, name):
    def rows():
        yield {"id": "a", "query": "q", "positives": ["p"]}
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        write_records(rows(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
