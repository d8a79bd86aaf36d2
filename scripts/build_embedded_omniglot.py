"""Build the Omniglot copy shipped inside the package: ``src/fewshot/data/omniglot28.npz`` (+ Vinyals splits).

Decodes all 32,460 drawings of the raw data at 28x28 (lossless ``uint8``, deflate level 9, fixed zip
timestamps so that rebuilding from the same data gives the same bytes), checks the counts, and copies the
Vinyals split files. The raw data may be in any layout :func:`fewshot.datasets.omniglot.load_omniglot_images`
reads; by default the per-alphabet zips in ``../shared/data/omniglot`` next to the repository.

Usage::

    python scripts/build_embedded_omniglot.py [RAW_DIR] [--out src/fewshot/data]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from fewshot.datasets.omniglot import EMBEDDED_IMAGE_SIZE, VINYALS_SPLITS, decode_omniglot  # noqa: E402

EXPECTED = {"images": 32_460, "alphabets": 50, "characters": 1_623}
MAX_BYTES = 8_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", nargs="?", type=Path, default=REPO / ".." / "shared" / "data" / "omniglot")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "fewshot" / "data")
    args = parser.parse_args(argv)

    raw = args.raw.resolve()
    data = decode_omniglot(raw, EMBEDDED_IMAGE_SIZE)
    counts = {
        "images": len(data),
        "alphabets": len(np.unique(data.alphabet)),
        "characters": len(np.unique(data.character_keys())),
    }
    if counts != EXPECTED:
        raise SystemExit(
            f"{raw} holds {counts}, expected {EXPECTED}: point RAW_DIR at the full Omniglot data"
        )

    out = args.out
    npz = data.save(out / f"omniglot{EMBEDDED_IMAGE_SIZE}.npz", compresslevel=9)
    size = npz.stat().st_size
    sha = hashlib.sha256(npz.read_bytes()).hexdigest()
    print(f"wrote {npz} ({size:,} bytes, sha256 {sha})")
    if size > MAX_BYTES:
        raise SystemExit(f"{npz} is {size:,} bytes, over the {MAX_BYTES:,} budget")

    splits = raw / "splits" / "vinyals"
    if splits.is_dir():
        (out / "vinyals").mkdir(parents=True, exist_ok=True)
        for name in VINYALS_SPLITS:
            shutil.copyfile(splits / f"{name}.txt", out / "vinyals" / f"{name}.txt")
        print(f"copied the Vinyals splits from {splits}")
    else:
        print(f"no {splits}: kept the Vinyals split files already in {out / 'vinyals'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
