"""File plumbing shared by the data sets: cache folder, atomic writes, checked downloads, safe archive names.

Everything that lands in the cache is written to a temporary file in the same folder and then renamed, so a
crash or an interrupted download never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from fewshot.io import _FILE_MODE

CACHE_ENV_VAR = "FEWSHOT_CACHE"
"""Environment variable naming the root of all fewshot caches (default ``~/.cache/fewshot``)."""

_CHUNK = 1 << 16


class DatasetError(ValueError):
    """A data file is missing, corrupt, unsafe or does not hold what was expected."""


def default_cache_dir(name: str) -> Path:
    """Cache folder of one data set: ``$FEWSHOT_CACHE/<name>``, else ``~/.cache/fewshot/<name>``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "fewshot"
    return base / name


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None, name: str) -> Path:
    """``cache_dir`` itself when given, else :func:`default_cache_dir` of ``name``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(name)


def write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray], compresslevel: int | None = 9) -> None:
    """Write ``arrays`` as an ``.npz`` that :func:`numpy.load` reads with ``allow_pickle=False``.

    Unlike :func:`numpy.savez_compressed` the zip entries get a fixed timestamp, so the same arrays always
    give the same bytes (a rebuilt data file does not change in git unless its content does).

    Args:
        f: binary file object open for writing.
        arrays: name -> array; object arrays are refused (they would need pickle).
        compresslevel: deflate level 0-9, or ``None`` to store uncompressed.
    """
    method = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(f, "w", compression=method, compresslevel=compresslevel) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            # writestr is the public way to give one entry both a fixed timestamp and a compression level.
            zf.writestr(info, buf.getbuffer(), compress_type=method, compresslevel=compresslevel)


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """Git blob id of a file: SHA-1 of ``b"blob <size>\\0" + content`` (what ``git hash-object`` prints)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_member_name(name: str, archive: str | os.PathLike[str]) -> None:
    """Refuse an archive member name that is absolute or climbs out of its folder (``..``).

    Such names are never legitimate in a data archive; refusing the whole archive (rather than skipping the
    member) makes a tampered or broken file visible.

    Raises:
        DatasetError: naming the archive, the member and the fix.
    """
    parts = name.replace("\\", "/").split("/")
    drive = len(name) >= 2 and name[1] == ":"
    if name.startswith(("/", "\\")) or drive or ".." in parts:
        raise DatasetError(
            f"{archive} contains an unsafe member {name!r} (absolute path or '..'); refusing to read it: "
            "delete this archive and get a clean copy (download=True)"
        )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    expected_blob_sha1: str,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, keeping it only if its git blob id matches.

    Args:
        url: ``http(s)://`` address of the file.
        dest: final path; its folder is created. An existing file there is replaced only on success.
        expected_blob_sha1: git blob id (40 hex digits) the downloaded bytes must have.
        progress: show a tqdm progress bar (only on a terminal).
        timeout: seconds to wait for the server on each network operation.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: HTTP error, network failure, incomplete transfer or checksum mismatch; nothing is left
            behind in ``dest``'s folder in that case.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            n_bytes, total = _fetch(url, f, dest.name, progress=progress, timeout=timeout)
        if total is not None and n_bytes != total:
            raise DatasetError(
                f"download of {url} is incomplete ({n_bytes} of {total} bytes); nothing was saved, try again"
            )
        got = git_blob_sha1(tmp)
        if got != expected_blob_sha1:
            raise DatasetError(
                f"{dest.name} downloaded from {url} has git blob id {got}, expected {expected_blob_sha1}: "
                "it is corrupt or not the expected file and was deleted; try again or check base_url"
            )
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(url: str, f: BinaryIO, label: str, *, progress: bool, timeout: float) -> tuple[int, int | None]:
    """Stream ``url`` into ``f``; returns (bytes written, Content-Length or None). Errors -> DatasetError."""
    hint = "check the address (base_url) and your connection, then try again"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.strip().isdigit() else None
            n_bytes = 0
            # disable=None: tqdm shows the bar only when stderr is a terminal (quiet in logs and tests).
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=None if progress else True
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    n_bytes += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DatasetError(f"downloading {url} failed: HTTP {e.code} {e.reason}; {hint}") from None
    except urllib.error.URLError as e:
        raise DatasetError(f"downloading {url} failed: {e.reason}; {hint}") from None
    except (OSError, http.client.HTTPException) as e:
        raise DatasetError(f"downloading {url} failed: {type(e).__name__}: {e}; {hint}") from None
    return n_bytes, total
