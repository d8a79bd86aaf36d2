"""``python -m fewshot``: the ``fewshot`` command (``torchrun -m fewshot`` too)."""

import sys

from fewshot.cli import main

sys.exit(main())
