#!/usr/bin/env python3
"""Set-up and the two commands of the README, needing nothing but Python 3.

    python3 make.py demo    create .venv, install fewshot, meta-train ProtoNet on Omniglot and test it
    python3 make.py test    create .venv, install fewshot with test extras (and Debian's chromium, as root),
                            run the whole test suite

The virtual environment is made once in .venv and reinstalled only when pyproject.toml or constraints.txt
change. constraints.txt pins torch to the CPU build this project is tested with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
# glibc's default allocator returns memory to the OS every step; these two thresholds keep it, which makes
# conv4 training about 25% faster here (see BENCHMARKS.md). Harmless elsewhere, ignored off glibc.
ALLOCATOR = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_env() -> None:
    stamp = VENV / ".fewshot-installed"
    want = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    ).hexdigest()
    if stamp.is_file() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"+ python3 -m venv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(*pip, "-c", "constraints.txt", "-e", ".[test]")
    stamp.write_text(want)


def child_env(extra: list[str] = ()) -> dict[str, str]:
    """The environment of the commands: the CPU allocator setting, unless the run asks for another device."""
    env = dict(os.environ)
    device = next((extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--device"), "cpu")
    if device == "cpu" or (device == "auto" and not shutil.which("nvidia-smi")):
        env.setdefault("GLIBC_TUNABLES", ALLOCATOR)
    return env


def demo(extra: list[str]) -> None:
    ensure_env()
    # each demo replaces the previous one's run directory (a plain `fewshot train` refuses to)
    run(BIN / "fewshot", "train", "--run-dir", "runs/demo", "--overwrite", "--max-minutes", "4", "--shots", "5", *extra,
        env=child_env(extra))  # fmt: skip


def ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium (never a downloaded browser build): installed with apt-get
    when this runs as root on a Debian-like system without it; elsewhere those tests skip and say why."""
    debian_root = os.name != "nt" and os.geteuid() == 0 and Path("/etc/debian_version").exists()
    if shutil.which("chromium") or not debian_root:
        return
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-q", env=apt)
    run("apt-get", "install", "-y", "-q", "chromium", env=apt)  # with its recommended fonts


def test(extra: list[str]) -> None:
    ensure_env()
    ensure_chromium()
    run(PY, "-m", "pytest", "-q", *extra, env=child_env())


if __name__ == "__main__":
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 make.py {{{'|'.join(commands)}}} [extra arguments]")
    commands[sys.argv[1]](sys.argv[2:])
