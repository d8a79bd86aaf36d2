"""Creates, once, the virtual environment the peer libraries are benchmarked in: ``benchmarks/.venv-peers``.

Peers are installed only there, never into fewshot's own environment:

* ``torch==2.13.0`` (the CPU build this machine has; never a bare ``torch``, which would pull a CUDA build),
  numpy, Pillow and tqdm;
* ``easyfsl==1.5.0`` with ``--no-deps`` (its metadata asks for torchvision);
* the import-only torchvision stand-in of ``benchmarks/peers/torchvision_stub``, put on the venv's
  ``sys.path`` by a ``.pth`` file, so peer processes need no ``PYTHONPATH`` and run with the same
  environment variables as fewshot's own.

The environment is rebuilt only when the requirement list below changes (a stamp file records it).

    python benchmarks/peers/setup_env.py     # create or check it; prints the peer interpreter's path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
PEER_VENV = BENCHMARKS / ".venv-peers"
STUB_ROOT = BENCHMARKS / "peers" / "torchvision_stub"  # holds the package directory ``torchvision/``
PEER_PY = PEER_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

# (pip arguments) per install step, in order
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    ("torch==2.13.0", "numpy", "pillow", "tqdm"),
    ("--no-deps", "easyfsl==1.5.0"),
)
CHECK = (
    "import torch, torchvision; from easyfsl.methods import PrototypicalNetworks; print(torch.__version__)"
)


def _stamp_text() -> str:
    return hashlib.sha256(repr(INSTALL_STEPS).encode()).hexdigest()


def _site_packages() -> Path:
    out = subprocess.run(
        [str(PEER_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _link_stub() -> None:
    """(Re)writes the ``.pth`` file that puts the torchvision stand-in on the peer venv's ``sys.path``."""
    pth = _site_packages() / "fewshot_bench_torchvision_stub.pth"
    want = f"{STUB_ROOT}\n"
    if not pth.is_file() or pth.read_text() != want:
        pth.write_text(want)


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def ensure_peer_env(verbose: bool = True) -> Path:
    """Creates ``benchmarks/.venv-peers`` if needed (a no-op when it is current); returns its Python."""
    stamp = PEER_VENV / ".fewshot-bench-installed"
    if not (stamp.is_file() and stamp.read_text() == _stamp_text() and PEER_PY.exists()):
        if verbose:
            print(f"creating the peer environment {PEER_VENV} (once)", file=sys.stderr, flush=True)
        if not PEER_PY.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(PEER_VENV)
        for args in INSTALL_STEPS:
            _run([str(PEER_PY), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args])
        _link_stub()
        _run([str(PEER_PY), "-c", CHECK])
        stamp.write_text(_stamp_text())
    else:
        _link_stub()  # the work tree may have moved
    return PEER_PY


if __name__ == "__main__":
    print(ensure_peer_env())
