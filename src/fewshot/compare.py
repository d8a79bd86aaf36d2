"""Side-by-side comparison of few-shot methods on identical test episodes.

Every method is scored on the same episodes (one :class:`~fewshot.tasks.episodes.EpisodeSampler`, one seed), so
per-episode accuracies pair up and the difference between two methods has a much tighter confidence interval
than either mean: the *paired* difference to the best method is reported with its own 95% CI.

A method is a trained run directory (evaluated with its own test-time algorithm), optionally with another
test-time algorithm on its network (``RUN:nn`` nearest neighbour in its embedding, ``RUN:finetune`` a new head,
see ``TEST_ALGORITHMS`` in :mod:`fewshot.registry`), or a built-in that needs no training: ``pixel-nn`` or
``input-nn`` (nearest neighbour of the raw inputs: pixels, table features or sentence embeddings), ``input-mean``
(nearest class mean of the raw inputs), ``linear-probe`` (a linear head trained on the raw inputs of each support
set, ``--finetune-steps`` Adam steps) and ``scratch`` (a fresh network trained on each support set). ``label=`` in front
names it in the table.

Outputs: ``write_table`` writes ``compare_<ways>w<shots>s`` .md, .json and .png (bars with 95% CIs);
``write_curves`` writes ``curves.json``, ``curve_shots.png`` (accuracy against shots) and ``curve_steps.png``
(accuracy against adaptation steps, for methods that adapt by gradient).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshot import devices, io
from fewshot.algorithms.base import Algorithm, Params, parameters_of
from fewshot.datasets.base import ClassDataset
from fewshot.evaluate import EvalResult, evaluate, mean_ci95

# methods that need no run: nearest neighbour and nearest class mean of the raw inputs (pixels, table features,
# sentence embeddings), a linear head trained on the raw inputs of each support set, a fresh network so trained
BUILTINS = ("pixel-nn", "input-nn", "input-mean", "linear-probe", "scratch")


@dataclass
class Method:
    """One contender: a label, its algorithm, network and parameters."""

    label: str
    algorithm: Algorithm
    model: nn.Module
    params: Params
    source: str  # the spec it came from
    ways: int | None = None  # a classifier head fixes the ways it can answer
    config: Any = None  # the run's TrainConfig (None for built-ins)
    device: torch.device | None = None  # where its episodes are computed (None: where its parameters are)


def parameter_count(method: Method) -> int:
    return sum(int(p.numel()) for p in method.params.values())


def load_method(
    spec: str,
    ways: int,
    image_shape: tuple[int, ...],
    finetune_steps: int = 100,
    device: str | torch.device | None = None,
) -> Method:
    """Builds a :class:`Method` from ``[label=]source[:test-algorithm]`` (see the module docstring), its network
    on ``device`` (None: the CPU; ``pixel-nn``, which has no network, then computes where the data is)."""
    from fewshot.baselines import FineTune, FineTuneSettings, NearestMean, NearestNeighbour
    from fewshot.models import ModelRequest
    from fewshot.registry import TEST_ALGORITHMS, get
    from fewshot.runs import load_run

    label, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    if "=" in spec and not label.strip():
        raise ValueError(f"method {spec!r}: the label before '=' is empty; write LABEL={rest} or just {rest}")
    source, _, override = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
    label = label or (Path(source).name if source not in BUILTINS else source) + (
        f":{override}" if override else ""
    )
    target = None if device is None else devices.resolve(device)
    if source in ("pixel-nn", "input-nn", "input-mean", "linear-probe"):
        # no parameters to say where it computes: the device goes with the method
        algorithm = {"input-mean": NearestMean(), "linear-probe": FineTune(steps=finetune_steps)}.get(
            source, NearestNeighbour("pixel")
        )
        return Method(label, algorithm, nn.Identity(), {}, spec, device=target)
    if source == "scratch":  # the scratch algorithm's own network for this data, fresh
        scratch, settings = get("scratch"), FineTuneSettings(finetune_steps=finetune_steps)
        data = "vectors" if len(image_shape) == 1 else "images"  # table rows or images
        request = ModelRequest(data, image_shape[0], image_shape[-1], ways=ways)
        # nn.Module initialisation draws from the global RNG: seed it here and restore it afterwards
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = scratch.model(request, settings)  # on the CPU: the same weights on every device
        if target is not None:
            model = model.to(target)
        return Method(label, scratch.build(settings, True), model, parameters_of(model), spec, ways)
    run_path = Path(source)
    if not run_path.is_dir():
        raise ValueError(
            f"method {spec!r}: {source} is neither a run directory nor one of {list(BUILTINS)}; "
            "give a --run-dir written by `fewshot train`"
        )
    run = load_run(run_path, "best", target)
    config = run.config
    if config.data == "regression":
        raise ValueError(f"method {spec!r} is a regressor; compare classifiers with classifiers")
    if override:
        if override not in TEST_ALGORITHMS:
            raise ValueError(
                f"method {spec!r}: unknown test algorithm {override!r}; choose one of {sorted(TEST_ALGORITHMS)}"
            )
        algorithm, fixed = TEST_ALGORITHMS[override](), None
    else:
        algorithm = run.algorithm(testing=True)
        fixed = config.ways if config.spec.fixed_ways else None
    return Method(label, algorithm, run.model, run.params, spec, fixed, config)


def prepare(
    specs: list[str],
    ways: int,
    split: str | None = None,
    data_root: str | None = None,
    finetune_steps: int = 100,
    device: str | torch.device | None = None,
) -> tuple[list[Method], ClassDataset]:
    """The methods named by ``specs`` and the test data they are compared on.

    The data is the first run directory's test split (or the embedded Omniglot's when only built-ins are
    named); every run must have been trained on the same data, so that the test classes are the same. The
    methods' networks are put on ``device`` (None: the CPU); the data stays on the CPU and each episode is
    moved to where it is computed.
    """
    from fewshot.config import TrainConfig
    from fewshot.datasets import load_split
    from fewshot.runs import RunDir

    base = TrainConfig()
    for spec in specs:
        run_dir = RunDir(spec.rpartition("=")[2].partition(":")[0])
        if run_dir.is_run():
            base = run_dir.config()
            break
    if base.data == "regression":
        raise ValueError(
            "regression runs are compared by fewshot.compare_regression (`fewshot compare` picks it itself)"
        )
    if data_root is not None:
        base = dataclasses.replace(base, data_root=data_root)
    data = load_split(base, split or base.test_split)
    methods = [load_method(spec, ways, data.image_shape, finetune_steps, device) for spec in specs]
    runs = {m.label: m.config for m in methods if m.config is not None}
    if runs and data_root is None:
        same_test_classes({"the data": base, **runs})
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two methods share a label ({labels}); name them with label=RUN")
    return methods, data


DATA_KEYS = ("dataset", "data_root", "split_scheme", "test_split", "image_size", "channels", "invert",
             "within", "label_column", "text_column", "encoder", "split_lists", "finetune_layers", "max_tokens", "val_fraction",
             "test_fraction", "split_seed")  # fmt: skip


def same_test_classes(configs: dict[str, Any]) -> None:
    """Refuses runs whose test classes could differ (other data, split or image conversion)."""
    first_label, first = next(iter(configs.items()))
    for label, config in configs.items():
        diff = [k for k in DATA_KEYS if getattr(config, k) != getattr(first, k)]
        if diff:
            raise ValueError(
                f"{label} and {first_label} differ in {', '.join(diff)}: their test classes or images may differ; "
                "compare runs trained on the same data"
            )


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width of the per-episode differences ``a - b``."""
    return mean_ci95(np.asarray(a) - np.asarray(b))


def compare(
    methods: list[Method],
    dataset: ClassDataset,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    progress: bool = True,
    within: str = "",
) -> dict[str, Any]:
    """Scores every method on the same ``episodes`` and returns the comparison table as a dict (``within``:
    ``"alphabet"`` draws each episode's classes from one alphabet, see :func:`~fewshot.evaluate.evaluate`).

    Rows (in the given order) hold: mean and 95% CI, support accuracy (after adapting on it), the paired
    difference to the best method with its CI, gradient steps at adaptation, median seconds per episode
    (adapt + predict) and the parameter count.
    """
    for m in methods:
        if m.ways is not None and m.ways != ways:
            raise ValueError(f"{m.label} has a {m.ways}-way classifier head; compare at --ways {m.ways}")
    results: dict[str, EvalResult] = {}
    for m in methods:
        results[m.label] = evaluate(
            m.algorithm,
            m.model,
            dataset,
            ways,
            shots,
            queries,
            episodes,
            seed,
            m.params,
            progress,
            support=True,
            device=m.device,
            within=within,
        )
    best = max(results, key=lambda k: results[k].mean)
    rows = []
    for m in methods:
        r = results[m.label]
        diff, diff_ci = paired(r.accuracies, results[best].accuracies)
        rows.append(
            {
                "method": m.label, "source": m.source, "algorithm": type(m.algorithm).__name__,
                "mean": r.mean, "ci95": r.ci95, "support_mean": r.support_mean,
                "diff_to_best": diff, "diff_to_best_ci95": 0.0 if m.label == best else diff_ci,
                "adaptation_steps": m.algorithm.adaptation_steps,
                "seconds_per_episode": r.seconds_per_episode, "parameters": parameter_count(m),
                "accuracies": r.accuracies,
            }
        )  # fmt: skip
    return {
        "ways": ways, "shots": shots, "queries": queries, "episodes": episodes, "seed": seed, "best": best,
        "rows": rows,
    }  # fmt: skip


def curves(
    methods: list[Method],
    dataset: ClassDataset,
    ways: int,
    shots_list: tuple[int, ...] = (1, 2, 5, 10),
    steps_list: tuple[int, ...] = tuple(range(11)),
    steps_shots: int = 1,
    queries: int = 15,
    episodes: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy against shots (every method) and against adaptation steps (methods that take gradient steps,
    at ``steps_shots`` shots); identical episodes for every method at each point.

    Every point uses the same number of queries per class, lowered if needed so that the largest shot count
    still fits the smallest class (Omniglot has 20 images per class: 10 shots leave 10 queries).
    """
    smallest = int(torch.bincount(dataset.labels).clamp_min(1)[torch.unique(dataset.labels)].min())
    queries = min(queries, smallest - max(shots_list))
    if queries < 1:
        raise ValueError(
            f"the smallest class has {smallest} examples, too few for {max(shots_list)} shots and a query"
        )
    out: dict[str, Any] = {
        "ways": ways,
        "queries": queries,
        "episodes": episodes,
        "seed": seed,
        "shots": {},
        "steps": {},
    }
    for m in methods:
        points = []
        for k in shots_list:
            r = evaluate(
                m.algorithm, m.model, dataset, ways, k, queries, episodes, seed, m.params, progress,
                device=m.device,
            )  # fmt: skip
            points.append({"shots": k, "mean": r.mean, "ci95": r.ci95})
        out["shots"][m.label] = points
        if not steps_list or m.algorithm.with_adaptation_steps(0) is None:
            continue
        points = []
        for t in steps_list:
            algo = m.algorithm.with_adaptation_steps(t)
            r = evaluate(
                algo, m.model, dataset, ways, steps_shots, queries, episodes, seed, m.params, progress,
                device=m.device,
            )  # fmt: skip
            points.append({"steps": t, "mean": r.mean, "ci95": r.ci95})
        out["steps"][m.label] = points
    out["steps_shots"] = steps_shots
    return out


def markdown(table: dict[str, Any]) -> str:
    head = (
        f"{table['ways']}-way {table['shots']}-shot, {table['episodes']} identical test episodes "
        f"({table['queries']} queries per class, seed {table['seed']}); mean and 95% CI in %.\n\n"
        "| method | accuracy | support accuracy | paired difference to best | adaptation steps | "
        "ms per episode | parameters |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in table["rows"]:
        diff = (
            "best"
            if r["method"] == table["best"]
            else f"{100 * r['diff_to_best']:+.2f} ± {100 * r['diff_to_best_ci95']:.2f}"
        )
        support = "-" if r["support_mean"] is None else f"{100 * r['support_mean']:.1f}"
        lines.append(
            f"| {r['method']} | {100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} | {support} | {diff} | "
            f"{r['adaptation_steps']} | {1000 * r['seconds_per_episode']:.1f} | {r['parameters']:,} |"
        )
    return head + "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ValueError("plots need matplotlib: pip install 'fewshot[plot]' (or pass --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def bar_chart(table: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    xs = np.arange(len(rows))
    means = [100 * r["mean"] for r in rows]
    ax.bar(xs, means, yerr=[100 * r["ci95"] for r in rows], capsize=4, color="#4c72b0")
    ax.set_xticks(xs, [r["method"] for r in rows], rotation=30, ha="right")
    low = min(means)
    ax.set_ylim(max(0.0, low - 10 if low > 10 else 0.0), 100)
    ax.set_ylabel("test accuracy (%), 95% CI")
    ax.set_title(f"{table['ways']}-way {table['shots']}-shot, {table['episodes']} episodes")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def curve_chart(points: dict[str, list[dict]], key: str, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, pts in points.items():
        xs = [p[key] for p in pts]
        ys = [100 * p["mean"] for p in pts]
        ci = [100 * (p["ci95"] if not math.isnan(p["ci95"]) else 0.0) for p in pts]
        ax.errorbar(xs, ys, yerr=ci, marker="o", markersize=3, capsize=3, label=label)
    ax.set_xlabel({"shots": "shots per class", "steps": "adaptation steps"}[key])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_table(out_dir: Path, table: dict[str, Any], plots: bool = True) -> list[Path]:
    """``compare_<ways>w<shots>s`` .md, .json and .png in ``out_dir``, each by temp file + rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"compare_{table['ways']}w{table['shots']}s"
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    io.write_text(written[0], markdown(table))
    io.write_json(written[1], table)
    if plots:
        bar_chart(table, stem.with_suffix(".png"))
        written.append(stem.with_suffix(".png"))
    return written


def write_curves(out_dir: Path, curve_data: dict[str, Any] | None, plots: bool = True) -> list[Path]:
    """``curves.json``, ``curve_shots.png`` and ``curve_steps.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if curve_data is not None:
        io.write_json(out_dir / "curves.json", curve_data)
        written.append(out_dir / "curves.json")
        if plots:
            w = curve_data["ways"]
            curve_chart(
                curve_data["shots"], "shots", out_dir / "curve_shots.png", f"{w}-way: accuracy against shots"
            )
            written.append(out_dir / "curve_shots.png")
            if curve_data["steps"]:
                curve_chart(
                    curve_data["steps"], "steps", out_dir / "curve_steps.png",
                    f"{w}-way {curve_data['steps_shots']}-shot: accuracy against adaptation steps",
                )  # fmt: skip
                written.append(out_dir / "curve_steps.png")
    return written
