"""embedpipe.storage against a real S3-protocol server (moto's) on 127.0.0.1, directly and through a proxy that
drops connections."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from embedpipe import storage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DroppingProxy:
    """A TCP proxy to ``target`` that closes the first ``drop`` connections without answering, and can be told
    to cut every connection (``drop_all``)."""

    def __init__(self, target: tuple[str, int], drop: int = 0):
        self.target = target
        self.drop = drop
        self.drop_all = False
        self.accepted = 0
        self.dropped = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.drop_all or self.dropped < self.drop:
                self.dropped += 1
                try:
                    conn.recv(1024)  # read part of the request, then cut the connection mid-exchange
                finally:
                    conn.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield ("127.0.0.1", port)
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    host, port = s3_server
    monkeypatch.setenv("EMBEDPIPE_S3_ENDPOINT", f"{host}:{port}")
    monkeypatch.setenv("EMBEDPIPE_S3_SECURE", "false")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_server


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_round_trip_with_multipart_and_marker(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_S3_PART_SIZE", str(5 * 1024 * 1024))
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(11 * 1024 * 1024))  # 3 parts of 5 MiB
    summary = storage.upload(src, "s3://artifacts/run1/model")
    assert summary == {"uri": "s3://artifacts/run1/model", "files": 2, "bytes": 11 * 1024 * 1024 + 8}

    stat = storage.client().stat_object("artifacts", "run1/model/sub/weights.bin")
    assert stat.etag.endswith("-3"), stat.etag  # a multipart upload's ETag counts its parts
    assert storage.read_marker("s3://artifacts/run1/model")["files"]["sub/weights.bin"] == 11 * 1024 * 1024

    out = storage.download("s3://artifacts/run1/model", tmp_path / "back")
    assert _tree(out) == _tree(src)
    assert storage.is_complete("s3://artifacts/run1/model")


def test_single_file_and_text_helpers(s3_env, tmp_path):
    storage.write_json("s3://artifacts/run1/scores.json", {"mean_task": 0.5})
    assert storage.read_json("s3://artifacts/run1/scores.json") == {"mean_task": 0.5}
    with storage.open_text("s3://artifacts/run1/scores.json") as handle:
        assert '"mean_task"' in handle.read()
    copy = storage.local_copy("s3://artifacts/run1/scores.json", tmp_path / "cache")
    assert copy.is_file() and "0.5" in copy.read_text()
    assert storage.local_copy("s3://artifacts/run1/scores.json", tmp_path / "cache") == copy  # cached
    storage.write_json("s3://artifacts/run1/scores.json", {"mean_task": 0.75})  # overwritten at the same URI
    fresh = storage.local_copy("s3://artifacts/run1/scores.json", tmp_path / "cache")
    assert fresh != copy and "0.75" in fresh.read_text()
    storage.delete("s3://artifacts/run1/scores.json")
    assert not storage.is_complete("s3://artifacts/run1/scores.json")


def _local_copy_in_process(uri, cache, barrier, results):
    barrier.wait()  # every process asks at the same moment, as the ranks of a training pod do
    try:
        path = storage.local_copy(uri, cache)
        results.put((str(path), _tree(path), (path / "weights.bin").stat().st_ino))
    except Exception as error:  # reported to the test, not lost in a child's stderr
        results.put(("error", repr(error), None))


def test_concurrent_local_copies_download_once_and_all_read_it(s3_env, tmp_path):
    """Four processes (a pod's ranks) ask for the same S3 folder at once: all get the whole folder, from one
    download (the same file on disk for all), and none fails on another's half-finished copy."""
    import multiprocessing

    src = tmp_path / "init"
    src.mkdir()
    for i in range(8):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(512 * 1024))
    (src / "weights.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    storage.upload(src, "s3://artifacts/run1/init")

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_local_copy_in_process,
                                 args=("s3://artifacts/run1/init", str(tmp_path / "cache"), barrier, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    got = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [message for path, message, _ in got if path == "error"]
    assert not errors, errors
    assert len({path for path, _, _ in got}) == 1 and len({inode for _, _, inode in got}) == 1
    assert all(tree == _tree(src) for _, tree, _ in got)


def test_artifact_without_marker_is_refused(s3_env, tmp_path):
    """Objects written but never marked (an upload that died) are not read as a whole artifact."""
    import io

    cli = storage.client()
    storage.ensure_bucket("s3://artifacts/x")
    cli.put_object("artifacts", "half/model/config.json", io.BytesIO(b"{}"), 2)
    with pytest.raises(storage.IncompleteArtifactError, match="s3://artifacts/half/model has no completion marker"):
        storage.download("s3://artifacts/half/model", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overwrite_removes_the_old_marker_first(s3_env, tmp_path, monkeypatch):
    src = tmp_path / "v1"
    src.mkdir()
    (src / "a.txt").write_text("one")
    storage.upload(src, "s3://artifacts/over/model")
    # an overwrite that dies after the marker removal leaves the artifact unreadable, not silently mixed
    real_fput = storage.client().__class__.fput_object

    def failing_fput(self, *args, **kwargs):
        raise ConnectionResetError("connection cut mid-upload")

    monkeypatch.setattr(storage.client().__class__, "fput_object", failing_fput)
    monkeypatch.setenv("EMBEDPIPE_S3_ATTEMPTS", "2")
    with pytest.raises(storage.StorageError, match="upload .* to s3://artifacts/over/model/a.txt"):
        storage.upload(src, "s3://artifacts/over/model")
    monkeypatch.setattr(storage.client().__class__, "fput_object", real_fput)
    assert not storage.is_complete("s3://artifacts/over/model")
    with pytest.raises(storage.IncompleteArtifactError):
        storage.download("s3://artifacts/over/model", tmp_path / "out")


def test_round_trip_through_a_proxy_that_drops_connections(s3_env, tmp_path, monkeypatch):
    proxy = DroppingProxy(s3_env, drop=3)
    try:
        monkeypatch.setenv("EMBEDPIPE_S3_ENDPOINT", f"127.0.0.1:{proxy.port}")
        src = tmp_path / "data"
        src.mkdir()
        for i in range(4):
            (src / f"part-{i}.jsonl").write_bytes(os.urandom(200_000))
        storage.upload(src, "s3://artifacts/flaky/data")
        proxy.drop = proxy.dropped + 2  # two more cuts during the download
        out = storage.download("s3://artifacts/flaky/data", tmp_path / "back")
        assert _tree(out) == _tree(src)
        assert proxy.dropped == 5  # the cuts happened, and were retried through
    finally:
        proxy.close()


def test_dead_endpoint_fails_with_a_clear_error(s3_env, tmp_path, monkeypatch):
    proxy = DroppingProxy(s3_env)
    proxy.drop_all = True
    try:
        monkeypatch.setenv("EMBEDPIPE_S3_ENDPOINT", f"127.0.0.1:{proxy.port}")
        monkeypatch.setenv("EMBEDPIPE_S3_RETRIES", "1")
        monkeypatch.setenv("EMBEDPIPE_S3_ATTEMPTS", "2")
        with pytest.raises(storage.StorageError, match=f"127.0.0.1:{proxy.port} is not usable for s3://artifacts/x"):
            storage.check_endpoint("s3://artifacts/x", timeout=2)
        (tmp_path / "f.txt").write_text("x")
        with pytest.raises(storage.StorageError, match="s3://artifacts"):
            storage.upload(tmp_path / "f.txt", "s3://artifacts/never/f.txt")
    finally:
        proxy.close()
    monkeypatch.setenv("EMBEDPIPE_S3_ENDPOINT", f"127.0.0.1:{_free_port()}")
    with pytest.raises(storage.StorageError, match="is not usable"):
        storage.check_endpoint("s3://artifacts/x", timeout=2)


def test_local_paths_and_uri_helpers(tmp_path):
    assert storage.is_remote("s3://b/k") and storage.is_remote("minio://b/k") and not storage.is_remote(tmp_path)
    assert storage.split_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert storage.join("s3://b/runs/", "x", "/y/") == "s3://b/runs/x/y"
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.split_uri("s3:///key")
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(b"123")
    storage.upload(src, tmp_path / "published" / "m")
    assert (tmp_path / "published" / "m" / "w.bin").read_bytes() == b"123"
    storage.write_json(tmp_path / "s.json", {"a": 1})
    assert storage.read_json(tmp_path / "s.json") == {"a": 1}
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_text(tmp_path / "missing.json")


def test_no_endpoint_configured_is_a_clear_error(monkeypatch):
    for name in ("EMBEDPIPE_S3_ENDPOINT", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(storage.StorageError, match="pipeline.s3_endpoint"):
        storage.read_text("s3://b/k")


def test_preflight_checks_every_remote_input(s3_env, tmp_path):
    """Each s3:// data source is checked where it is (its own bucket and key), and never created; the artifact
    root's bucket may be created."""
    from embedpipe.orchestration.preflight import check_endpoints_of
    from embedpipe.recipe import load_recipe

    host, port = s3_env
    (tmp_path / "d.jsonl").write_text('{"query": "q", "positives": ["p"]}\n')
    storage.upload(tmp_path / "d.jsonl", "s3://inputs/sets/d.jsonl")
    source = {"kind": "jsonl", "task_type": "retrieval", "weight_stage1": 1.0, "weight_stage2": 1.0}
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "local.yaml", {
        "pipeline.artifact_root": "s3://fresh-artifacts/runs", "pipeline.s3_endpoint": f"{host}:{port}",
        "pipeline.s3_secure": False, "pipeline.mlflow_tracking_uri": str(tmp_path / "mlruns"), "sdg.enabled": False,
        "data.sources": [{"name": "ok", "path": "s3://inputs/sets/d.jsonl", **source},
                         {"name": "folder", "path": "s3://inputs/sets", **source},
                         {"name": "typo", "path": "s3://inputs/sets/missing.jsonl", **source},
                         {"name": "elsewhere", "path": "s3://no-such-bucket/d.jsonl", **source}]})
    problems = check_endpoints_of(recipe)
    assert problems == [
        "data.sources[2] (typo).path: s3://inputs/sets/missing.jsonl: nothing is stored at this key or under it",
        f"data.sources[3] (elsewhere).path: s3://no-such-bucket/d.jsonl: bucket 'no-such-bucket' does not exist at "
        f"{host}:{port}",
    ]
    assert storage.client().bucket_exists("fresh-artifacts")
    assert not storage.client().bucket_exists("no-such-bucket")
