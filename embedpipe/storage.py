"""Artifacts on a local folder or on S3 (MinIO), behind one set of helpers.

Step logic works on local paths; a ``s3://bucket/key`` URI is moved with the minio client: multipart upload for large
files, retries with exponential back-off on dropped connections and server errors, and a completion marker written
last, so that an artifact whose upload died half-way is never read as whole (``download`` refuses it).

Configuration (environment, so KFP pods get it from Kubernetes Secrets and child processes inherit it):
``EMBEDPIPE_S3_ENDPOINT`` (``host:port``; else ``AWS_ENDPOINT_URL`` / ``MLFLOW_S3_ENDPOINT_URL``),
``EMBEDPIPE_S3_SECURE`` (``true``/``false``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``EMBEDPIPE_S3_RETRIES`` (default 6), ``EMBEDPIPE_S3_PART_SIZE`` (bytes, default 64 MiB, at least 5 MiB).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

log = logging.getLogger(__name__)

SCHEMES = ("s3://", "minio://")  # KFP on MinIO names its artifacts minio://bucket/key
MARKER = ".embedpipe-complete"  # a folder's marker: <prefix>/.embedpipe-complete; a file's: <key>.embedpipe-complete
MIN_PART_SIZE = 5 * 1024 * 1024
T = TypeVar("T")


class StorageError(RuntimeError):
    """An artifact that cannot be read or written; the message names the URI."""


class IncompleteArtifactError(StorageError):
    """The artifact has no completion marker (still being written, or its upload failed) or does not match it."""


# ----------------------------------------------------------------------------------------------------------- URIs
def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` (and KFP's ``minio://``) URIs, False for local paths."""
    return str(uri).startswith(SCHEMES)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    if not is_remote(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    parsed = urlparse(str(uri))
    if not parsed.netloc:
        raise StorageError(f"{uri!r} names no bucket (expected s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with ``/`` (``os.path.join`` would break ``s3://``)."""
    out = str(base).rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


# --------------------------------------------------------------------------------------------------------- client
def configure(endpoint: str | None, secure: bool | None = None) -> None:
    """Set the S3 endpoint for this process and its children (the recipe's ``pipeline.s3_endpoint``)."""
    if endpoint:
        os.environ["EMBEDPIPE_S3_ENDPOINT"] = endpoint
    if secure is not None:
        os.environ["EMBEDPIPE_S3_SECURE"] = "true" if secure else "false"


def endpoint_settings() -> tuple[str, bool]:
    """(``host:port``, secure) from the environment; a clear error when no endpoint is configured."""
    endpoint = os.environ.get("EMBEDPIPE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get(
        "MLFLOW_S3_ENDPOINT_URL"
    )
    if not endpoint:
        raise StorageError(
            "an s3:// URI needs an endpoint: set pipeline.s3_endpoint in the recipe or EMBEDPIPE_S3_ENDPOINT"
        )
    secure_env = os.environ.get("EMBEDPIPE_S3_SECURE")
    if "://" in endpoint:
        parsed = urlparse(endpoint)
        secure = parsed.scheme == "https" if secure_env is None else secure_env.lower() in ("1", "true", "yes")
        return parsed.netloc, secure
    secure = True if secure_env is None else secure_env.lower() in ("1", "true", "yes")
    return endpoint, secure


def client(retries: int | None = None, timeout: float = 60.0):
    """A minio client for the configured endpoint; urllib3 retries connection and 5xx failures with back-off."""
    import urllib3
    from minio import Minio

    endpoint, secure = endpoint_settings()
    retries = int(os.environ.get("EMBEDPIPE_S3_RETRIES", 6)) if retries is None else retries
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
        maxsize=10,
        retries=urllib3.Retry(
            total=retries, connect=retries, read=retries, backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504], allowed_methods=None, raise_on_status=False,
        ),
    )
    return Minio(
        endpoint,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("MINIO_ACCESS_KEY"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("MINIO_SECRET_KEY"),
        secure=secure,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        http_client=http,
    )


def _retryable(err: BaseException) -> bool:
    import urllib3
    from minio.error import S3Error, ServerError

    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ServerError)):
        return True
    return isinstance(err, S3Error) and err.code in ("InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout")


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None, base_delay: float = 0.5) -> T:
    """Run ``fn`` again after transient failures, doubling the pause each time (the client's own retries come first)."""
    attempts = attempts or int(os.environ.get("EMBEDPIPE_S3_ATTEMPTS", 4))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - filtered by _retryable
            if not _retryable(err) or attempt == attempts:
                if isinstance(err, StorageError):
                    raise
                raise StorageError(f"{what}: {type(err).__name__}: {err}") from err
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("%s failed (%s), retry %d/%d in %.1fs", what, type(err).__name__, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _part_size() -> int:
    return max(MIN_PART_SIZE, int(os.environ.get("EMBEDPIPE_S3_PART_SIZE", 64 * 1024 * 1024)))


def _stat(cli, bucket: str, key: str):
    from minio.error import S3Error

    try:
        return with_retries(lambda: cli.stat_object(bucket, key), f"stat s3://{bucket}/{key}")
    except StorageError as err:
        cause = err.__cause__
        if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
            return None
        raise


def _list_keys(cli, bucket: str, prefix: str) -> list[str]:
    return with_retries(
        lambda: [o.object_name for o in cli.list_objects(bucket, prefix=prefix, recursive=True)],
        f"list s3://{bucket}/{prefix}",
    )


def ensure_bucket(uri: str) -> None:
    """Create the URI's bucket if it does not exist."""
    bucket, _ = split_uri(uri)
    cli = client()
    if not with_retries(lambda: cli.bucket_exists(bucket), f"bucket s3://{bucket}"):
        with_retries(lambda: cli.make_bucket(bucket), f"create bucket s3://{bucket}")


def check_endpoint(uri: str, timeout: float = 5.0) -> None:
    """Pre-flight: the endpoint answers and the bucket exists (or can be created); a clear error otherwise."""
    bucket, _ = split_uri(uri)
    endpoint, secure = endpoint_settings()
    cli = client(retries=0, timeout=timeout)
    try:
        exists = cli.bucket_exists(bucket)
        if not exists:
            cli.make_bucket(bucket)
    except Exception as err:  # noqa: BLE001 - every failure here is the same verdict
        raise StorageError(
            f"S3 endpoint {'https' if secure else 'http'}://{endpoint} is not usable for {uri}: "
            f"{type(err).__name__}: {err}"
        ) from None


def check_source(uri: str, timeout: float = 5.0) -> None:
    """Pre-flight for an input: its bucket exists and something is stored at the key (a file, or a folder's files).
    Unlike :func:`check_endpoint`, never creates the bucket: a missing input is the user's typo, not ours to make."""
    bucket, key = split_uri(uri)
    endpoint, secure = endpoint_settings()
    cli = client(retries=0, timeout=timeout)
    try:
        if not cli.bucket_exists(bucket):
            raise StorageError(f"{uri}: bucket {bucket!r} does not exist at {endpoint}")
        found = next(iter(cli.list_objects(bucket, prefix=key, recursive=True)), None)
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure here is the same verdict
        raise StorageError(f"S3 endpoint {'https' if secure else 'http'}://{endpoint} is not usable for {uri}: "
                           f"{type(err).__name__}: {err}") from None
    if found is None:
        raise StorageError(f"{uri}: nothing is stored at this key or under it")


# ------------------------------------------------------------------------------------------------- upload/download
def upload(local: str | os.PathLike, uri: str) -> dict:
    """Copy a file or folder to ``uri`` (S3 or a local path); the completion marker is written last.

    Returns ``{"uri", "files", "bytes"}``. An existing marker is removed first, so a reader never takes a
    half-overwritten artifact for a whole one.
    """
    local = Path(local)
    if not local.exists():
        raise StorageError(f"cannot upload {local}: it does not exist")
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    sizes = {(p.relative_to(local).as_posix() if local.is_dir() else ""): p.stat().st_size for p in files}
    if not is_remote(uri):
        return _copy_local(local, Path(uri), sizes)
    bucket, key = split_uri(uri)
    key = key.rstrip("/")
    cli = client()
    ensure_bucket(uri)
    marker = f"{key}/{MARKER}" if local.is_dir() else f"{key}{MARKER}"
    with_retries(lambda: cli.remove_object(bucket, marker), f"remove s3://{bucket}/{marker}")
    part_size = _part_size()
    for path in files:
        rel = path.relative_to(local).as_posix() if local.is_dir() else ""
        object_key = f"{key}/{rel}" if rel else key
        with_retries(
            lambda: cli.fput_object(bucket, object_key, str(path), part_size=part_size),
            f"upload {path} to s3://{bucket}/{object_key}",
        )
    body = json.dumps({"files": sizes, "kind": "dir" if local.is_dir() else "file", "time": time.time()}).encode()
    with_retries(
        lambda: cli.put_object(bucket, marker, io.BytesIO(body), len(body), content_type="application/json"),
        f"write marker s3://{bucket}/{marker}",
    )
    return {"uri": uri, "files": len(files), "bytes": sum(sizes.values())}


def _copy_local(src: Path, dst: Path, sizes: dict[str, int]) -> dict:
    if src.resolve() != dst.resolve():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        if src.is_dir():
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            shutil.copy2(src, tmp)
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        os.replace(tmp, dst)
    return {"uri": str(dst), "files": len(sizes), "bytes": sum(sizes.values())}


def read_marker(uri: str) -> dict | None:
    """The completion marker of an S3 artifact (``{"files": {rel: size}, "kind"}``), or None when it has none."""
    bucket, key = split_uri(uri)
    key = key.rstrip("/")
    cli = client()
    for marker in (f"{key}/{MARKER}", f"{key}{MARKER}"):
        if _stat(cli, bucket, marker) is not None:
            response = with_retries(lambda: cli.get_object(bucket, marker), f"read s3://{bucket}/{marker}")
            try:
                return json.loads(response.read())
            finally:
                response.close()
                response.release_conn()
    return None


def is_complete(uri: str | os.PathLike) -> bool:
    """A local path that exists, or an S3 artifact with its completion marker."""
    return read_marker(str(uri)) is not None if is_remote(uri) else Path(uri).exists()


def download(uri: str, local: str | os.PathLike) -> Path:
    """Copy a whole artifact to ``local`` (file or folder, as it was uploaded); refuses one with no marker."""
    local = Path(local)
    if not is_remote(uri):
        src = Path(uri)
        if not src.exists():
            raise StorageError(f"{src} does not exist")
        sizes = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()} if src.is_dir() else {"": src.stat().st_size}
        _copy_local(src, local, sizes)
        return local
    bucket, key = split_uri(uri)
    key = key.rstrip("/")
    manifest = read_marker(uri)
    if manifest is None:
        raise IncompleteArtifactError(
            f"{uri} has no completion marker ({MARKER}): it is still being written or its upload failed"
        )
    cli = client()
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for rel, size in manifest["files"].items():
            object_key = f"{key}/{rel}" if rel else key
            target = tmp / rel if rel else tmp / "file"
            target.parent.mkdir(parents=True, exist_ok=True)
            with_retries(
                lambda: cli.fget_object(bucket, object_key, str(target)), f"download s3://{bucket}/{object_key}"
            )
            if target.stat().st_size != size:
                raise IncompleteArtifactError(
                    f"s3://{bucket}/{object_key} has {target.stat().st_size} bytes, its marker says {size}"
                )
        source = tmp / "file" if manifest.get("kind") == "file" else tmp
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        os.replace(source, local)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return local


def delete(uri: str) -> None:
    """Remove an artifact (marker first, so it stops being readable before it disappears)."""
    if not is_remote(uri):
        path = Path(uri)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return
    bucket, key = split_uri(uri)
    key = key.rstrip("/")
    cli = client()
    for marker in (f"{key}/{MARKER}", f"{key}{MARKER}"):
        with_retries(lambda: cli.remove_object(bucket, marker), f"remove s3://{bucket}/{marker}")
    for name in _list_keys(cli, bucket, key):
        if name == key or name.startswith(key + "/"):
            with_retries(lambda: cli.remove_object(bucket, name), f"remove s3://{bucket}/{name}")


# ------------------------------------------------------------------------------------------------ small documents
def write_text(uri: str | os.PathLike, text: str) -> str:
    """Write a small text artifact (a JSON summary, a manifest); atomic locally, marked on S3."""
    if not is_remote(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return str(path)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body"
        path.write_text(text)
        upload(path, str(uri))
    return str(uri)


def read_text(uri: str | os.PathLike) -> str:
    """Read a small text artifact (local path or marked S3 object)."""
    if not is_remote(uri):
        path = Path(uri)
        if not path.is_file():
            raise StorageError(f"{path} does not exist")
        return path.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        return download(str(uri), Path(tmp) / "body").read_text()


def write_json(uri: str | os.PathLike, value) -> str:
    return write_text(uri, json.dumps(value, indent=2, sort_keys=True, default=str))


def read_json(uri: str | os.PathLike):
    return json.loads(read_text(uri))


@contextmanager
def open_text(uri: str | os.PathLike) -> Iterator[io.TextIOBase]:
    """Open a text artifact for reading, wherever it lives (S3 objects are fetched whole first)."""
    if not is_remote(uri):
        with open(uri, encoding="utf-8") as handle:
            yield handle
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = download(str(uri), Path(tmp) / "body")
        with open(path, encoding="utf-8") as handle:
            yield handle


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path for ``uri``: local paths as they are, S3 artifacts downloaded once into ``cache_dir``.

    Safe across processes: the ranks of a training pod all ask for the same init model and records at once. A file
    lock beside the entry lets the first download it while the others wait and then read that one copy (without it,
    each rank downloaded the whole model and a late one replaced the folder another was already loading)."""
    if not is_remote(uri):
        return Path(uri)
    import hashlib

    from filelock import FileLock

    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "embedpipe-s3-cache")
    bucket, key = split_uri(str(uri))
    # keyed by the URI and the stored version, so an artifact overwritten at the same URI is fetched again
    version = f"{uri}\n{_stored_version(str(uri))}"
    entry = cache / hashlib.sha256(version.encode()).hexdigest()[:16]
    target = entry / (Path(key).name or bucket)
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry / ".lock")):
        if not target.exists():
            download(str(uri), target)
    return target


def _stored_version(uri: str) -> str:
    """ETag and time of the artifact's completion marker (each upload writes a new one: it holds the upload time),
    else of the object itself."""
    bucket, key = split_uri(uri)
    key = key.rstrip("/")
    cli = client()
    for name in (f"{key}/{MARKER}", f"{key}{MARKER}", key):
        stat = _stat(cli, bucket, name)
        if stat is not None:
            return f"{stat.etag}:{stat.last_modified.isoformat() if stat.last_modified else ''}"
    return "absent"  # download() says what is missing


def publish(local: str | os.PathLike, uri: str | os.PathLike) -> str:
    """Put a finished artifact at ``uri`` (upload to S3, or copy to a local folder) and return the URI."""
    return upload(local, str(uri))["uri"]
