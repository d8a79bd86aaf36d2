"""Files a user keeps: written to a temporary name in the same directory, then renamed.

A crash (even ``kill -9``) therefore leaves either the old file or the new one, never half of one. Tensors are
stored with safetensors (no pickle), everything else as JSON.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from safetensors.torch import load_file, save
from torch import Tensor

_FILE_MODE = 0o644  # mkstemp makes owner-only files; runs, caches and data are not secret


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Writes a file through ``write(fileobj)`` to a temporary file beside ``path``, then renames it.

    The rename is atomic on one file system, so readers see either the old file or the complete new one. On
    any error the temporary file is removed and the error propagates.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except OSError as e:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise WriteError(path, e) from e
    except BaseException:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


class WriteError(OSError, ValueError):
    """A file could not be written: names the file (not the temporary one), what happened and what was kept.
    An OSError (what it is) and a ValueError (what the command line reports in one line with exit code 2)."""

    def __init__(self, path: Path, error: OSError) -> None:
        kept = f"{path} was left as it was" if path.exists() else f"nothing was written to {path}"
        if error.errno == errno.ENOSPC:
            why = "the disk is full; free some space and run the command again"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = f"no permission to write in {path.parent}; choose a folder you can write to"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            why = f"a part of {path.parent} is a file, not a folder; choose another place"
        else:
            why = error.strerror or str(error)
        super().__init__(f"cannot write {path}: {why} ({kept})")
        self.path, self.errno = path, error.errno  # errno after __init__: a one-argument OSError has none


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so that it is strict JSON (no bare NaN or
    Infinity tokens, which most JSON readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats become null)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented strict JSON, atomically."""
    return write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Saves a name -> tensor dict as safetensors, atomically (tensors are made contiguous copies)."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda f: f.write(save(plain, metadata=metadata)))


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Loads a safetensors file; a missing or damaged file raises a ValueError that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; give the path of a fewshot checkpoint (.safetensors)"
        )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(
            f"{path} is not a readable safetensors checkpoint ({e}); retrain or restore it"
        ) from e


def load_tensors_and_metadata(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`load_tensors`, plus the file's string metadata."""
    from safetensors import safe_open

    tensors = load_tensors(path)  # raises the readable errors for missing and damaged files
    with safe_open(str(path), framework="pt") as f:
        return tensors, dict(f.metadata() or {})


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Appends one JSON line and flushes it to disk (a crash can cut only the line being written)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WriteError(Path(path), e) from e


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads JSON lines, ignoring a last line cut short by a crash."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines) - 1:
                raise ValueError(f"{path}: line {n + 1} is not JSON; the metrics file is damaged") from None
    return records
