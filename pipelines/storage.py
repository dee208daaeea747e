"""One small storage API for local paths and object stores, over ``pyarrow.fs``.

Which filesystem serves a URI, with which endpoint and credentials, is
:mod:`pipelines.filesystems` (s3://, gs://, abfs://, local paths). Here: reading, listing and
writing with the same behaviour everywhere. Local writes are atomic (a temp file beside the
target, fsync, rename) and new files get the usual mode (0666 less the umask). Missing files
raise ``FileNotFoundError`` naming the URI, a missing bucket ``FileNotFoundError`` naming the
bucket. pyarrow is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import IO, Any

from pipelines.filesystems import (  # noqa: F401 (the storage API)
    SCHEMES,
    StorageCredentialsError,
    StorageOptions,
    filesystem,
    filesystem_path,
    is_remote,
    is_s3,
    is_supported,
    ray_storage,
    resolve_endpoint,
    scheme,
    to_uri,
)

S3_PREFIX = "s3://"
SPOOL_MAX_BYTES = 64 << 20  # a remote object bigger than this is spooled to a temp file on disk
COPY_CHUNK = 8 << 20
_known_buckets: set[tuple] = set()


def join(base: str, *parts: str) -> str:
    """Join path parts; an absolute part (``/x`` or ``scheme://``) restarts, like
    ``os.path.join``."""
    out = base
    for part in parts:
        if is_remote(part) or (not is_remote(out) and os.path.isabs(part)):
            out = part
        elif is_remote(out):
            out = out.rstrip("/") + "/" + part.lstrip("/") if part else out
        else:
            out = os.path.join(out, part)
    return out


def parent(uri: str) -> str:
    """The directory holding ``uri`` (``s3://b/x/y.txt`` -> ``s3://b/x``)."""
    if is_remote(uri):
        head, _, rest = uri.partition("://")
        root, _, key = rest.rstrip("/").partition("/")
        up = key.rpartition("/")[0]
        return f"{head}://{root}/{up}" if up else f"{head}://{root}"
    return os.path.dirname(uri.removeprefix("file://"))


# --- errors --------------------------------------------------------------------------------


def _missing(uri: str, fs: Any) -> FileNotFoundError:
    """A missing remote file: FileNotFoundError naming the URI, or its bucket if that is gone."""
    _check_bucket(uri, fs)
    return FileNotFoundError(f"no such object: {uri}")


def _check_bucket(uri: str, fs: Any) -> None:
    """Raise FileNotFoundError naming the bucket/container of ``uri`` when it does not exist."""
    import pyarrow.fs as pafs

    bucket = filesystem_path(uri).partition("/")[0]
    memo = (id(fs), bucket)
    if memo in _known_buckets:
        return
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{scheme(uri)} bucket not found: {bucket!r} (for {uri})")
    _known_buckets.add(memo)


def _info(uri: str, opts: StorageOptions | None):
    """pyarrow FileInfo of ``uri``; a missing bucket raises FileNotFoundError."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, opts)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound and is_remote(uri):
        _check_bucket(uri, fs)
    return info


# --- reading -------------------------------------------------------------------------------


def read_bytes(
    uri: str, opts: StorageOptions | None = None, byte_range: tuple[int, int] | None = None
) -> bytes:
    """The file's bytes, or ``length`` bytes at ``offset`` if ``byte_range=(offset, length)``."""
    if byte_range is not None and byte_range[1] == 0:
        return b""
    fs, path = filesystem(uri, opts)
    try:
        if byte_range is None:
            with fs.open_input_stream(path) as f:
                return f.read()
        with fs.open_input_file(path) as f:
            data = f.read_at(byte_range[1], byte_range[0]) if byte_range[0] < f.size() else b""
    except FileNotFoundError:
        if not is_remote(uri):
            raise FileNotFoundError(f"no such file: {uri}") from None
        raise _missing(uri, fs) from None
    if len(data) != byte_range[1]:
        raise EOFError(f"{uri}: wanted {byte_range[1]} bytes at {byte_range[0]}, got {len(data)}")
    return data


def read_text(uri: str, opts: StorageOptions | None = None) -> str:
    """The file decoded as UTF-8 (UnicodeDecodeError propagates unchanged)."""
    return read_bytes(uri, opts).decode("utf-8")


def exists(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if ``uri`` is a file/object, or a directory/prefix holding at least one object."""
    import pyarrow.fs as pafs

    return _info(uri, opts).type != pafs.FileType.NotFound


def is_file(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if ``uri`` is a regular file or an object. A missing bucket raises."""
    import pyarrow.fs as pafs

    return _info(uri, opts).type == pafs.FileType.File


def is_dir(uri: str, opts: StorageOptions | None = None) -> bool:
    """True for a directory, or a prefix with at least one object under it (or a bucket)."""
    import pyarrow.fs as pafs

    return _info(uri, opts).type == pafs.FileType.Directory


def _has_suffix(name: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or name.lower().endswith(tuple(s.lower() for s in suffixes))


def list_files(
    prefix_uri: str, opts: StorageOptions | None = None, suffixes: tuple[str, ...] | None = None
) -> list[str]:
    """Every file under the directory/prefix ``prefix_uri``, recursively, as sorted full URIs.

    ``suffixes`` (e.g. ``(".jpg", ".png")``) keeps only names ending in one of them, ignoring case.
    A missing local directory or bucket raises FileNotFoundError; an empty prefix gives [].
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(prefix_uri, opts)
    remote = is_remote(prefix_uri)
    if not remote and not os.path.isdir(path):
        raise FileNotFoundError(f"no such directory: {prefix_uri}")
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=remote)
    try:
        infos = fs.get_file_info(selector)
    except OSError as err:
        if remote:
            _check_bucket(prefix_uri, fs)  # a missing bucket: FileNotFoundError naming it
        raise err from None
    if remote and not infos:
        _check_bucket(prefix_uri, fs)
    base = (
        prefix_uri.rstrip("/") if remote else os.path.normpath(prefix_uri.removeprefix("file://"))
    )
    out = [
        base + info.path[len(path) :]
        for info in infos
        if info.type == pafs.FileType.File and _has_suffix(info.base_name, suffixes)
    ]
    return sorted(out)


def open_read(uri: str, opts: StorageOptions | None = None) -> IO[bytes]:
    """A seekable binary file: a local file, or the remote object in a SpooledTemporaryFile."""
    if not is_remote(uri):
        try:
            return open(uri.removeprefix("file://"), "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such file: {uri}") from exc
    fs, path = filesystem(uri, opts)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)  # noqa: SIM115 (returned)
    try:
        with fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, spool, COPY_CHUNK)
    except FileNotFoundError:
        spool.close()
        raise _missing(uri, fs) from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool  # type: ignore[return-value]


def open_for_tar_scan(uri: str, opts: StorageOptions | None = None) -> IO[bytes]:
    """A binary file object to scan tar headers from (see :func:`open_read`)."""
    return open_read(uri, opts)


# --- writing -------------------------------------------------------------------------------


def _write_local(path: str, fill) -> None:
    """Atomically create ``path``: ``fill(file)`` writes a temp file beside it (mode 0666 less
    the umask), which is fsynced and renamed over ``path``; on failure it is removed."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None) -> None:
    """Write ``data`` to ``uri`` (locally: atomically, see :func:`_write_local`)."""
    if not is_remote(uri):
        _write_local(os.path.abspath(uri.removeprefix("file://")), lambda f: f.write(data))
        return
    fs, path = filesystem(uri, opts)
    with fs.open_output_stream(path) as f:
        f.write(data)


def upload_file(local_path: str, uri: str, opts: StorageOptions | None = None) -> None:
    """Copy a finished local file to ``uri`` (locally: atomically; object stores: a streamed,
    multipart where needed, upload)."""
    with open(local_path, "rb") as src:
        if not is_remote(uri):
            target = os.path.abspath(uri.removeprefix("file://"))
            _write_local(target, lambda f: shutil.copyfileobj(src, f, COPY_CHUNK))
            return
        fs, path = filesystem(uri, opts)
        with fs.open_output_stream(path) as f:
            shutil.copyfileobj(src, f, COPY_CHUNK)


def delete(uri: str, opts: StorageOptions | None = None) -> None:
    """Delete a file/object; deleting something already absent is not an error."""
    fs, path = filesystem(uri, opts)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def delete_tree(uri: str, opts: StorageOptions | None = None) -> None:
    """Delete a directory/prefix and everything under it; absent is not an error."""
    fs, path = filesystem(uri, opts)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)
