"""``fewshot report RUN``: pictures of a run.

* ``training.png``: training loss, training and validation score (with the validation 95% CI band) against
  meta-training steps, from ``metrics.jsonl``;
* ``shots.png``: test accuracy against shots (1, 2, 5, 10 by default) on the run's test classes, with CIs;
* ``report.json``: the numbers behind both.

Everything is written to ``RUN/report/`` (or ``--out``) by temp file + rename. Needs matplotlib
(``pip install 'fewshot[plot]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewshot import io


def training_chart(metrics: list[dict[str, Any]], path: Path, title: str, data: str) -> None:
    """Training loss, and training and validation scores, against the step: accuracy (%) for classifiers, MSE for
    regression, total reward per trial for bandits."""
    from fewshot.compare import _pyplot, _save

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [m["step"] for m in metrics if m.get("loss") is not None]
    left.plot(steps, [m["loss"] for m in metrics if m.get("loss") is not None], color="#4c72b0", marker=".")
    left.set_xlabel("meta-training step")
    left.set_ylabel("training loss (query, after adaptation)")
    left.grid(alpha=0.3)
    scale = 100 if data in ("images", "vectors") else 1
    train = [(m["step"], scale * m["score"]) for m in metrics if m.get("score") is not None]
    if train:
        right.plot(*zip(*train, strict=True), color="#999999", label="training tasks")
    val = [m for m in metrics if m.get("val_score") is not None]
    if val:
        xs = [m["step"] for m in val]
        ys = [scale * m["val_score"] for m in val]
        ci = [scale * (m.get("val_ci95") or 0.0) for m in val]
        right.plot(xs, ys, marker="o", markersize=3, color="#dd8452", label="validation (95% CI)")
        right.fill_between(xs, [y - c for y, c in zip(ys, ci, strict=True)], [y + c for y, c in zip(ys, ci, strict=True)],
                           color="#dd8452", alpha=0.25)  # fmt: skip
    right.set_xlabel("meta-training step")
    right.set_ylabel({"regression": "MSE", "bandit": "total reward per trial"}.get(data, "accuracy (%)"))
    right.grid(alpha=0.3)
    if train or val:
        right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def report(run_dir: str | Path, out: str | Path | None = None, shots: tuple[int, ...] = (1, 2, 5, 10),
           episodes: int = 100, seed: int = 0, progress: bool = True,
           device: str | torch.device | None = None) -> list[Path]:  # fmt: skip
    """Writes the run's plots and numbers; returns the files written. The test episodes are computed on
    ``device`` (None: the CPU)."""
    from fewshot.compare import curve_chart, load_method
    from fewshot.compare import curves as accuracy_curves
    from fewshot.datasets import load_split
    from fewshot.runs import RunDir

    run_dir = RunDir(run_dir)
    out_dir = Path(out) if out is not None else run_dir.path / "report"
    config = run_dir.config()
    metrics = run_dir.metrics()
    if not metrics:
        raise ValueError(f"{run_dir.path} has no metrics.jsonl records yet; train (or resume) the run first")
    from fewshot.compare import _pyplot

    _pyplot()  # fail early without matplotlib
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the report")
    classify = config.data in ("images", "vectors")
    summary: dict[str, Any] = {"run": str(run_dir.path), "config": config.flat(), "last": metrics[-1]}
    curve = None
    if classify:  # the slow part first: a report is written whole or not at all
        data = load_split(config, config.test_split)
        ways = config.ways if config.spec.fixed_ways else min(config.val_ways, data.num_classes)
        smallest = int(min(n for n in data.labels.bincount().tolist() if n > 0))
        usable = tuple(k for k in shots if k < smallest)
        if not usable:
            raise ValueError(
                f"the test classes of {run_dir.path} have {smallest} examples each at the least, so a test needs "
                f"fewer shots than that to keep a query; give --shots below {smallest} (got {' '.join(map(str, shots))})"
            )
        method = load_method(str(run_dir.path), ways, data.image_shape, device=device)
        curve = accuracy_curves([method], data, ways, shots_list=usable, steps_list=(), episodes=episodes, seed=seed,
                                progress=progress)  # fmt: skip
    summary["shots"] = curve  # regression and bandit runs: None (`fewshot eval` scores them)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "training.png"]
    training_chart(metrics, written[0], f"{config.algorithm} on {config.dataset}", config.data)
    if curve is not None:
        written.append(out_dir / "shots.png")
        curve_chart(
            curve["shots"],
            "shots",
            written[-1],
            f"{ways}-way test accuracy against shots ({episodes} episodes)",
        )
    written.append(io.write_json(out_dir / "report.json", summary))
    return written
