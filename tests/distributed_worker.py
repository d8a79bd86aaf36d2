"""Run by ``torchrun`` from tests/test_distributed.py: trains each case of a JSON file with the Python API, every
process of the run taking part, into OUT/<case>; then leaves the process group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewshot import distributed
from fewshot.config import TrainConfig
from fewshot.train import Trainer

if __name__ == "__main__":
    cases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    for name, settings in cases.items():
        Trainer(TrainConfig.of(**settings), out / name, progress=False).run()
    distributed.stop()
