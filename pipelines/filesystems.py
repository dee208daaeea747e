"""Which ``pyarrow.fs`` filesystem serves a URI, with what settings and credentials.

- local paths (or ``file://``): ``LocalFileSystem``;
- ``s3://bucket/key``: ``S3FileSystem``; the endpoint from :class:`StorageOptions`, else
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto, Ceph); credentials from the AWS
  chain (``AWS_ACCESS_KEY_ID`` ..., profiles, instance roles);
- ``gs://bucket/key`` (``gcs://``): ``GcsFileSystem`` with Google's default credentials;
- ``abfs://container@account.dfs.core.windows.net/path`` (``abfss://``; or
  ``abfs://container/path`` with ``AZURE_STORAGE_ACCOUNT_NAME``): ``AzureFileSystem`` with
  ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``, a service principal
  (``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``) or Azure's default credential.

For gs:// and abfs:// the credentials are looked for before any request (without them every
request would retry for minutes): none found is a :class:`StorageCredentialsError` naming what
to set. pyarrow.fs is what Ray Train uses for ``storage_path`` too (:func:`ray_storage`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

GCS_SCHEMES = ("gs", "gcs")
AZURE_SCHEMES = ("abfs", "abfss", "az")
SCHEMES = ("s3", *GCS_SCHEMES, *AZURE_SCHEMES)
AZURE_CREDENTIAL_VARS = (
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
)
GCE_PRODUCT = Path("/sys/class/dmi/id/product_name")  # "Google Compute Engine" on GCE/GKE
AZURE_VENDOR = Path("/sys/class/dmi/id/sys_vendor")  # "Microsoft Corporation" on Azure VMs


class StorageCredentialsError(ValueError):
    """No credentials for an object store: raised before any request, naming what to set."""


AWS = "aws"  # endpoint_url for AWS's own S3 endpoint, whatever the environment says


@dataclass
class StorageOptions:
    """Where S3 lives. ``endpoint_url``: "" = ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
    else AWS; "aws" = AWS; or an S3-compatible server's URL. ``region``: "" =
    ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` / the SDK's default."""

    endpoint_url: str = ""
    region: str = ""

    def resolved(self) -> StorageOptions:
        """These options with the environment's endpoint and region filled in. Jobs resolve
        them on the driver and ship the result, so that workers never fall back to their own
        node's environment (an empty endpoint becomes "aws")."""
        env = os.environ
        endpoint = (
            self.endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or AWS
        )
        region = self.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION", "")
        return replace(self, endpoint_url=endpoint, region=region)


def resolve_endpoint(endpoint_url: str) -> str:
    """The S3 endpoint that ``endpoint_url`` means here (see :meth:`StorageOptions.resolved`)."""
    return StorageOptions(endpoint_url).resolved().endpoint_url


_filesystems: dict[tuple, Any] = {}
_lock = threading.Lock()


def scheme(uri: str) -> str:
    """``s3``, ``gs``, ``abfs``, ... or "" for a local path (``file://`` too)."""
    if "://" not in uri:
        return ""
    head, sep, _ = uri.partition("://")
    return "" if not sep or head == "file" or "/" in head else head.lower()


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith("s3://")


def is_remote(uri: str) -> bool:
    """True for object-store URIs (anything with a scheme but ``file://``)."""
    return bool(scheme(uri))


def is_supported(uri: str) -> bool:
    """A local path or a URI of a store this module reaches."""
    return scheme(uri) in ("", *SCHEMES)


def _gcs_filesystem(uri: str):
    import pyarrow.fs as pafs

    env = os.environ
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if key_file and not os.path.isfile(key_file):
        raise StorageCredentialsError(
            f"{uri}: GOOGLE_APPLICATION_CREDENTIALS={key_file} is not a file"
        )
    config_dir = env.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    found = (
        key_file
        or os.path.isfile(os.path.join(config_dir, "application_default_credentials.json"))
        or env.get("GCE_METADATA_HOST")
        or _dmi_says(GCE_PRODUCT, "Google")
    )
    if not found:
        raise StorageCredentialsError(
            f"{uri}: no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
            "service-account key file, run 'gcloud auth application-default login', or run "
            "on Google Cloud (its metadata server)"
        )
    return pafs.GcsFileSystem()


def _azure_filesystem(uri: str):
    import pyarrow.fs as pafs

    env = os.environ
    netloc = uri.partition("://")[2].partition("/")[0]
    account = netloc.partition("@")[2].split(".")[0] or env.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    if not account:
        raise StorageCredentialsError(
            f"{uri}: no storage account: write abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/... "
            "or set AZURE_STORAGE_ACCOUNT_NAME"
        )
    kwargs: dict[str, str] = {}
    if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        kwargs["account_key"] = env["AZURE_STORAGE_ACCOUNT_KEY"]
    elif env.get("AZURE_STORAGE_SAS_TOKEN"):
        kwargs["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
    elif all(env.get(k) for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")):
        kwargs |= {
            "client_id": env["AZURE_CLIENT_ID"],
            "tenant_id": env["AZURE_TENANT_ID"],
            "client_secret": env["AZURE_CLIENT_SECRET"],
        }
    elif not (
        env.get("AZURE_FEDERATED_TOKEN_FILE")  # workload identity
        or os.path.isdir(os.path.expanduser("~/.azure"))  # az login
        or _dmi_says(AZURE_VENDOR, "Microsoft")  # managed identity on an Azure VM
    ):
        raise StorageCredentialsError(
            f"{uri}: no Azure credentials: set AZURE_STORAGE_ACCOUNT_KEY or "
            "AZURE_STORAGE_SAS_TOKEN, a service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
            "AZURE_CLIENT_SECRET), run 'az login', or use a managed identity"
        )
    return pafs.AzureFileSystem(account, **kwargs)


def _dmi_says(path: Path, word: str) -> bool:
    try:
        return word in path.read_text()
    except OSError:
        return False


def _s3_filesystem(opts: StorageOptions):
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=8),
    }
    if opts.endpoint_url and opts.endpoint_url != AWS:
        scheme_, _, host = opts.endpoint_url.partition("://")
        kwargs |= {"endpoint_override": host or scheme_, "scheme": scheme_ if host else "https"}
    if opts.region:
        kwargs["region"] = opts.region
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str, opts: StorageOptions | None = None) -> tuple[Any, str]:
    """(pyarrow filesystem, its path for ``uri``): one filesystem object per process, store
    and settings."""
    import pyarrow.fs as pafs

    kind = scheme(uri)
    if not kind:
        return pafs.LocalFileSystem(), filesystem_path(uri)
    if kind not in SCHEMES:
        raise ValueError(f"{uri}: unsupported storage scheme {kind}:// (use {', '.join(SCHEMES)})")
    netloc = uri.partition("://")[2].partition("/")[0]
    if not netloc.partition("@")[0]:
        raise ValueError(f"{uri}: no bucket or container in the URI")
    if kind == "s3":
        resolved = (opts or StorageOptions()).resolved()
        settings: tuple = (resolved.endpoint_url, resolved.region)
    elif kind in AZURE_SCHEMES:
        account = netloc.partition("@")[2] or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        settings = (account, *(os.environ.get(k) for k in AZURE_CREDENTIAL_VARS))
    else:
        settings = (os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),)
    key = (os.getpid(), kind, *settings)
    with _lock:
        fs = _filesystems.get(key)
        if fs is None:
            if kind == "s3":
                fs = _s3_filesystem(resolved)
            elif kind in GCS_SCHEMES:
                fs = _gcs_filesystem(uri)
            else:
                fs = _azure_filesystem(uri)
            _filesystems[key] = fs
    return fs, filesystem_path(uri)


def ray_storage(uri: str, opts: StorageOptions | None = None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's ``RunConfig``: a local absolute path
    and None, or the store's path and filesystem."""
    if not is_remote(uri):
        return os.path.abspath(uri.removeprefix("file://")), None
    fs, path = filesystem(uri, opts)
    return path, fs


def to_uri(base_uri: str, fs_path: str) -> str:
    """The URI of ``fs_path`` (a path that ``filesystem(base_uri)`` uses) under ``base_uri``."""
    if not is_remote(base_uri):
        return fs_path
    base_path = filesystem_path(base_uri)
    if fs_path == base_path or fs_path.startswith(base_path + "/"):
        return base_uri.rstrip("/") + fs_path[len(base_path) :]
    return f"{scheme(base_uri)}://{fs_path}"


def filesystem_path(uri: str) -> str:
    """The path part that :func:`filesystem` gives for ``uri`` (no filesystem is created)."""
    if not is_remote(uri):
        return os.path.abspath(uri.removeprefix("file://"))
    netloc, _, key = uri.partition("://")[2].partition("/")
    if scheme(uri) in AZURE_SCHEMES:
        netloc = netloc.partition("@")[0]
    return f"{netloc}/{key}".rstrip("/")
