"""One small storage API for local paths and ``s3://bucket/key`` URIs.

Credentials come only from boto3's normal chain (``AWS_ACCESS_KEY_ID`` ..., profiles, instance
roles); the endpoint from :class:`StorageOptions` or else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (MinIO, moto, Ceph). boto3 is imported lazily, so importing this module is
cheap. Missing files and keys raise ``FileNotFoundError`` naming the URI; a missing bucket raises
``FileNotFoundError`` naming the bucket.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import IO, Any

S3_PREFIX = "s3://"
SPOOL_MAX_BYTES = 64 << 20  # an S3 object bigger than this is spooled to a temp file on disk


@dataclass
class StorageOptions:
    """Where S3 lives. Empty fields mean "use the environment / boto3 defaults"."""

    endpoint_url: str = ""
    region: str = ""


_clients: dict[tuple[int, str, str], Any] = {}
_known_buckets: set[tuple[str, str]] = set()
_clients_lock = threading.Lock()


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path parts; an absolute part (``/x`` or ``s3://``) restarts, like ``os.path.join``."""
    out = base
    for part in parts:
        if is_s3(part) or (not is_s3(out) and os.path.isabs(part)):
            out = part
        elif is_s3(out):
            out = out.rstrip("/") + "/" + part.lstrip("/") if part else out
        else:
            out = os.path.join(out, part)
    return out


def parent(uri: str) -> str:
    """The directory holding ``uri`` (``s3://b/x/y.txt`` -> ``s3://b/x``)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        head = key.rstrip("/").rpartition("/")[0]
        return f"{S3_PREFIX}{bucket}/{head}" if head else f"{S3_PREFIX}{bucket}"
    return os.path.dirname(uri)


def _endpoint(opts: StorageOptions | None) -> str:
    if opts is not None and opts.endpoint_url:
        return opts.endpoint_url
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _client(opts: StorageOptions | None) -> Any:
    """One boto3 S3 client per (process, endpoint, region); clients are thread-safe to share."""
    endpoint, region = _endpoint(opts), (opts.region if opts else "")
    cache_key = (os.getpid(), endpoint, region)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 8, "mode": "standard"})
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint or None, region_name=region or None, config=config
            )
            _clients[cache_key] = client
        return client


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _check_bucket(bucket: str, uri: str, opts: StorageOptions | None) -> None:
    """Raise FileNotFoundError naming ``bucket`` when it does not exist (cached once it does)."""
    from botocore.exceptions import ClientError

    memo = (_endpoint(opts), bucket)
    if memo in _known_buckets:
        return
    try:
        _client(opts).head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise FileNotFoundError(f"s3 bucket not found: {bucket!r} (for {uri})") from exc
        raise
    _known_buckets.add(memo)


def _s3_not_found(exc: Exception, uri: str, opts: StorageOptions | None) -> FileNotFoundError:
    """A 404 ClientError as FileNotFoundError naming the URI, or the bucket if that is gone."""
    bucket, _ = split_s3(uri)
    if _error_code(exc) == "NoSuchBucket":
        return FileNotFoundError(f"s3 bucket not found: {bucket!r} (for {uri})")
    _check_bucket(bucket, uri, opts)
    return FileNotFoundError(f"no such object: {uri}")


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def read_bytes(
    uri: str, opts: StorageOptions | None = None, byte_range: tuple[int, int] | None = None
) -> bytes:
    """The file's bytes, or ``length`` bytes at ``offset`` if ``byte_range=(offset, length)``."""
    if byte_range is not None and byte_range[1] == 0:
        return b""
    if not is_s3(uri):
        try:
            with open(uri, "rb") as f:
                if byte_range is None:
                    return f.read()
                f.seek(byte_range[0])
                data = f.read(byte_range[1])
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such file: {uri}") from exc
    else:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1] - 1}"
        try:
            data = _client(opts).get_object(**kwargs)["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise _s3_not_found(exc, uri, opts) from exc
            raise
    if byte_range is not None and len(data) != byte_range[1]:
        raise EOFError(f"{uri}: wanted {byte_range[1]} bytes at {byte_range[0]}, got {len(data)}")
    return data


def read_text(uri: str, opts: StorageOptions | None = None) -> str:
    """The file decoded as UTF-8 (UnicodeDecodeError propagates unchanged)."""
    return read_bytes(uri, opts).decode("utf-8")


def exists(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if ``uri`` is a file/object, or a directory/prefix holding at least one object."""
    if not is_s3(uri):
        return os.path.exists(uri)
    return is_file(uri, opts) or is_dir(uri, opts)


def is_file(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if ``uri`` is a regular file (local) or an object (S3). A missing bucket raises."""
    if not is_s3(uri):
        return os.path.isfile(uri)
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        return False
    try:
        _client(opts).head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if _is_missing(exc):
            _check_bucket(bucket, uri, opts)
            return False
        raise


def is_dir(uri: str, opts: StorageOptions | None = None) -> bool:
    """True for a local directory, or an S3 prefix (``uri/``) with at least one object under it."""
    if not is_s3(uri):
        return os.path.isdir(uri)
    bucket, key = split_s3(uri)
    _check_bucket(bucket, uri, opts)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    page = _client(opts).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return page.get("KeyCount", 0) > 0


def _has_suffix(name: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or name.lower().endswith(tuple(s.lower() for s in suffixes))


def list_files(
    prefix_uri: str, opts: StorageOptions | None = None, suffixes: tuple[str, ...] | None = None
) -> list[str]:
    """Every file under the directory/prefix ``prefix_uri``, recursively, as sorted full URIs.

    ``suffixes`` (e.g. ``(".jpg", ".png")``) keeps only names ending in one of them, ignoring case.
    A missing local directory or S3 bucket raises FileNotFoundError; an empty S3 prefix gives [].
    """
    out: list[str] = []
    if not is_s3(prefix_uri):
        if not os.path.isdir(prefix_uri):
            raise FileNotFoundError(f"no such directory: {prefix_uri}")
        for dirpath, _dirnames, filenames in os.walk(prefix_uri):
            out += [os.path.join(dirpath, n) for n in filenames if _has_suffix(n, suffixes)]
        return sorted(out)
    from botocore.exceptions import ClientError

    bucket, key = split_s3(prefix_uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    paginator = _client(opts).get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/") and _has_suffix(obj["Key"], suffixes):
                    out.append(f"{S3_PREFIX}{bucket}/{obj['Key']}")
    except ClientError as exc:
        if _is_missing(exc):
            raise FileNotFoundError(f"s3 bucket not found: {bucket!r} (for {prefix_uri})") from exc
        raise
    return sorted(out)


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None) -> None:
    """Write ``data`` to ``uri``. Local writes are atomic (temp file + ``os.replace``)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _client(opts).put_object(Bucket=bucket, Key=key, Body=data)
        return
    directory = os.path.dirname(os.path.abspath(uri))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(uri)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def upload_file(local_path: str, uri: str, opts: StorageOptions | None = None) -> None:
    """Move/copy a finished local file to ``uri``: local destinations get it atomically
    (``os.replace`` after a copy into the destination directory); S3 gets a (multipart)
    upload."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _client(opts).upload_file(local_path, bucket, key)
        return
    directory = os.path.dirname(os.path.abspath(uri))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(uri)}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, uri)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def delete(uri: str, opts: StorageOptions | None = None) -> None:
    """Delete a file/object; deleting something already absent is not an error."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _client(opts).delete_object(Bucket=bucket, Key=key)
    elif os.path.exists(uri):
        os.remove(uri)


def open_read(uri: str, opts: StorageOptions | None = None) -> IO[bytes]:
    """A seekable binary file: local ``open()``, or the S3 object in a SpooledTemporaryFile."""
    if not is_s3(uri):
        try:
            return open(uri, "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such file: {uri}") from exc
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)  # noqa: SIM115 (returned)
    try:
        _client(opts).download_fileobj(bucket, key, spool)
    except ClientError as exc:
        spool.close()
        if _is_missing(exc):
            raise _s3_not_found(exc, uri, opts) from exc
        raise
    spool.seek(0)
    return spool  # type: ignore[return-value]


def open_for_tar_scan(uri: str, opts: StorageOptions | None = None) -> IO[bytes]:
    """A binary file object to scan tar headers from (see :func:`open_read`)."""
    return open_read(uri, opts)
