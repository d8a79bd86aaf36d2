"""Regression runs side by side on identical tasks: trained in-context learners, MAML on sinusoids, and the
estimators of Garg et al. (2022) on the very same prompts.

``fewshot compare RUN... [baselines | least-squares | ridge | 3-nn | averaging | gd] --shots 0 5 10`` lands
here when the runs are regressors. Every method is scored on the first run's test tasks (a task is a value:
any model of the same input size can be scored on it), so per-task errors pair up and the paired difference to
the best method gets its own, tighter, 95% CI. The baselines are rebuilt at each number of examples (gradient
descent's learning rate is tuned for it on other prompts, :func:`~fewshot.regression_baselines.tuned_gradient_descent`).

Outputs per number of examples ``k``: ``compare_regression_<k>shot`` .md and .json; with several ``k``,
``curve_error.json`` and ``curve_error.png`` (query squared error against ``k``: Garg et al.'s figure 2 for
the runs given).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshot import io
from fewshot.compare import Method, _pyplot, _save, paired, parameter_count
from fewshot.evaluate import evaluate_regression

# a command-line name -> the name prompt_baselines gives that estimator ("baselines" is all of them)
BASELINES = {"least-squares": "least squares", "ridge": "ridge", "3-nn": "3-nearest neighbours",
             "averaging": "averaging", "gd": "gradient descent, 1 step (best lr)"}  # fmt: skip


def is_regression(specs: list[str]) -> bool:
    """Whether the first run directory among ``specs`` holds a regression run (else: a classifier, or none)."""
    from fewshot.runs import RunDir

    for spec in specs:
        run_dir = RunDir(spec.rpartition("=")[2].partition(":")[0])
        if run_dir.is_run():
            return run_dir.config().data == "regression"
    return all(s.rpartition("=")[2] in {*BASELINES, "baselines"} for s in specs)


def prepare_regression(
    specs: list[str], device: str | torch.device | None = None
) -> tuple[list[Method], Any]:
    """The trained runs among ``specs`` and the test task family of the first (baseline names are resolved per
    number of examples by :func:`compare_regression`)."""
    from fewshot.datasets import load_split
    from fewshot.runs import load_run

    methods, family = [], None
    for spec in specs:
        label, _, source = spec.rpartition("=")
        if source in BASELINES or source == "baselines":
            continue
        if not Path(source).is_dir():
            raise ValueError(f"method {spec!r}: {source} is neither a run directory nor one of "
                             f"{['baselines', *BASELINES]}")  # fmt: skip
        run = load_run(source, "best", device)
        if run.config.data != "regression":
            raise ValueError(f"method {spec!r} is a classifier; compare regressors with regressors")
        if family is None:
            family = load_split(run.config, run.config.test_split)
        elif run.config.in_features != family.in_features:
            raise ValueError(f"method {spec!r} reads {run.config.in_features} inputs, the first run "
                             f"{family.in_features}: compare runs of the same task family")  # fmt: skip
        methods.append(Method(label or source, run.algorithm(testing=True), run.model, run.params, spec, None,
                              run.config, torch.device(device) if device else None))  # fmt: skip
    if family is None:
        raise ValueError("compare needs at least one regression run directory to take its test tasks from")
    return methods, family


def compare_regression(
    methods: list[Method],
    specs: list[str],
    family: Any,
    shots: int,
    episodes: int = 600,
    progress: bool = True,
) -> dict[str, Any]:
    """Every method and named baseline on the same ``episodes`` tasks with ``shots`` examples each: query
    mean squared error, 95% CI, and the paired difference to the best (lowest) method."""
    from fewshot.regression_baselines import prompt_baselines

    family = dataclasses.replace(family, shots=shots)
    available = prompt_baselines(family)
    entries: list[Method] = []
    runs = iter(methods)
    for spec in specs:
        label, _, source = spec.rpartition("=")
        if source == "baselines":
            entries += [Method(name, b, nn.Identity(), {}, source) for name, b in available.items()]
        elif source in BASELINES:
            name = next((n for n in available if n.startswith(BASELINES[source])), None)
            if name is None:  # ridge: only with label noise, where it differs from least squares
                raise ValueError(f"{source}: these tasks have no label noise; ridge would be least squares")
            entries.append(Method(label or name, available[name], nn.Identity(), {}, source))
        else:
            entries.append(next(runs))
    labels = [m.label for m in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"two methods share a label ({labels}); name them with label=METHOD or list each once"
        )
    results = {}
    for m in entries:
        results[m.label] = evaluate_regression(m.algorithm, m.model, family, episodes, m.params, progress,
                                               m.device or ("cpu" if not m.params else None))  # fmt: skip
    best = min(results, key=lambda k: results[k].mean)
    rows = []
    for m in entries:
        r = results[m.label]
        diff, diff_ci = paired(r.accuracies, results[best].accuracies)
        rows.append({"method": m.label, "source": m.source, "algorithm": type(m.algorithm).__name__,
                     "mse": r.mean, "ci95": r.ci95, "diff_to_best": diff,
                     "diff_to_best_ci95": 0.0 if m.label == best else diff_ci,
                     "seconds_per_task": r.seconds_per_episode, "parameters": parameter_count(m),
                     "errors": r.accuracies})  # fmt: skip
    return {"metric": "mse", "shots": shots, "queries": family.queries, "episodes": episodes,
            "seed": family.seed, "best": best, "rows": rows}  # fmt: skip


def markdown_regression(table: dict[str, Any]) -> str:
    head = (
        f"{table['shots']} examples per task, {table['episodes']} identical test tasks ({table['queries']} "
        f"queries each, task seed {table['seed']}); query mean squared error and 95% CI.\n\n"
        "| method | MSE | paired difference to best | ms per task | parameters |\n|---|---|---|---|---|\n"
    )
    lines = []
    for r in table["rows"]:
        diff = (
            "best"
            if r["method"] == table["best"]
            else f"{r['diff_to_best']:+.4f} ± {r['diff_to_best_ci95']:.4f}"
        )
        lines.append(f"| {r['method']} | {r['mse']:.4f} ± {r['ci95']:.4f} | {diff} | "
                     f"{1000 * r['seconds_per_task']:.2f} | {r['parameters']:,} |")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def write_regression(out_dir: Path, tables: list[dict[str, Any]], plots: bool = True) -> list[Path]:
    """Each table as ``compare_regression_<k>shot`` .md and .json; with several, the error-against-k curve."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        stem = out_dir / f"compare_regression_{table['shots']}shot"
        written += [io.write_text(stem.with_suffix(".md"), markdown_regression(table)),
                    io.write_json(stem.with_suffix(".json"), table)]  # fmt: skip
    if len(tables) > 1:
        curve = {r["method"]: [] for r in tables[0]["rows"]}
        for table in tables:
            for r in table["rows"]:
                curve.setdefault(r["method"], []).append(
                    {"shots": table["shots"], "mse": r["mse"], "ci95": r["ci95"]}
                )
        written.append(io.write_json(out_dir / "curve_error.json", curve))
        if plots:
            written.append(_error_chart(curve, out_dir / "curve_error.png"))
    return written


def _error_chart(curve: dict[str, list[dict]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curve.items():
        ks = [p["shots"] for p in points]
        ys, ci = np.array([p["mse"] for p in points]), np.array([p["ci95"] for p in points])
        ax.plot(ks, ys, marker="o", markersize=3, label=label)
        ax.fill_between(ks, ys - ci, ys + ci, alpha=0.15)
    ax.set_xlabel("examples per task (k)")
    ax.set_ylabel("query squared error")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


__all__ = ["BASELINES", "compare_regression", "is_regression", "markdown_regression", "prepare_regression",
           "write_regression"]  # fmt: skip
