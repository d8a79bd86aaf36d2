"""Reading the pickles that few-shot benchmarks are published as, without running anything in them.

``pickle.load`` will call any function a file names (``os.system``, ``builtins.eval``, ...), so a data file
from the internet is a program. The published files (mini-ImageNet, tieredImageNet, CIFAR-100, MetaOptNet's
CIFAR-FS / FC100 pickles) hold only dicts, lists, strings, numbers and numpy arrays. Containers, strings and
numbers are built by the pickle machine itself; the only functions these files name are the handful numpy
uses to rebuild an array, which :class:`DataUnpickler` admits. Anything else is refused *before* it is called.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

from fewshot.datasets.storage import DatasetError


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy >= 2) or ``numpy.core.<name>`` (numpy 1.x), without deprecation noise."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _allowed() -> dict[tuple[str, str], Any]:
    import numpy as np

    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol 0-2 pickles of Python 3 spell bytes as _codecs.encode(str, "latin1") (the array's raw data).
        ("_codecs", "encode"): __import__("codecs").encode,
    }
    # Files written under numpy 1.x name numpy.core, under numpy 2 numpy._core; both mean the same functions.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocol <= 4
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # a numpy scalar, e.g. np.int64(3)
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # ndarray, protocol 5
    return allowed


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and numpy arrays, and refuses every other global.

    Strings written by Python 2 (most published files) are decoded as latin-1, which is what numpy needs to
    rebuild their arrays; text keys therefore come back as ``str`` (``'data'``, not ``b'data'``).

    Args:
        file: binary file object positioned at the pickle.
        where: how to name the file in errors.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if DataUnpickler._ALLOWED is None:
            DataUnpickler._ALLOWED = _allowed()
        obj = DataUnpickler._ALLOWED.get((module, name))
        if obj is None:
            raise DatasetError(
                f"{self.where} is not a plain dataset pickle: it asks for {module}.{name}, which data files "
                "never need; it was refused and nothing in the file was run (delete it and get a clean copy)"
            )
        return obj


def load_pickle(source: str | os.PathLike[str] | bytes, where: str | None = None) -> Any:
    """Unpickle a data file (a path, or the bytes of an archive member) with :class:`DataUnpickler`.

    Args:
        source: path of the pickle, or its content.
        where: how to name it in errors (default: the path).

    Returns:
        The unpickled dicts / lists / arrays.

    Raises:
        DatasetError: the file asks for a function that is not admitted (nothing was run), or it is truncated or
            not a pickle.
    """
    label = where if where is not None else str(source)
    try:
        if isinstance(source, bytes):
            return DataUnpickler(io.BytesIO(source), label).load()
        with Path(source).open("rb") as f:
            return DataUnpickler(f, label).load()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{label} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OSError) as e:
        # a cut-short file ends in the middle of an opcode (EOFError / UnpicklingError "truncated")
        raise DatasetError(
            f"{label} is not a readable pickle: it is truncated or corrupt ({type(e).__name__}: {e}); "
            "get a complete copy"
        ) from None
