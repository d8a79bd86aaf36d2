"""In-context learning of linear functions: Garg et al. (2022)'s figure and von Oswald et al. (2023)'s finding.

    .venv/bin/python benchmarks/incontext.py garg     # two transformers (with / without the curriculum), d = 10
    .venv/bin/python benchmarks/incontext.py oswald   # linear self-attention, 1 to 3 layers, against GD steps
    .venv/bin/python benchmarks/incontext.py garg --minutes 2 --prompts 100 --quick   # smoke run

``garg``: a decoder-only transformer (``--width``/``--depth``/``--heads``) is trained on prompts of linear
functions ``f(x) = w.x``, ``x, w ~ N(0, I_d)``, ``2d`` examples and a query per prompt, Adam at a constant rate,
for ``--minutes`` of training each: once with Garg et al.'s curriculum (active dimensions from 5 and examples from
10, growing every ``--every`` steps) and once without. Both are then tested on the same ``--prompts`` prompts per
number of examples ``k = 0 .. 2d`` beside least squares, 3-nearest neighbours, averaging and one step of gradient
descent at its best learning rate (``fewshot.regression_baselines``); the squared error of the query is divided by
``d`` as in the paper. Then, on the same trained model, Garg et al.'s out-of-distribution prompts: inputs scaled
by 2 and 3, noisy labels (sd 1, against ridge), a skewed input covariance (eigenvalues ~ 1/i^2), and prompts up to
``3d`` examples (longer than in training).

``oswald``: linear self-attention (von Oswald et al. 2023, 1, 2 and 3 layers) trained from random weights on
``d = 10`` linear functions of ``x ~ U(-1, 1)^d`` with 10 examples per prompt (the paper's setting; Adam 1e-3 as in
their code, but 256 prompts per step where it takes 512, and 4,000 steps where it takes 10,000; two seeds), against
1, 2 and 3 steps of gradient descent with the best learning rate: the loss along training beside GD's, and at the
end, over ``--prompts`` held-out prompts, the cosine similarity between their predictions and between their
sensitivities to the query input (d y_hat / d x_query, per prompt, averaged).

Writes benchmarks/results/incontext_garg.json (+ .png, _ood.png) and incontext_oswald.json (+ .png). Run alone:
two benchmarks at once on 2 cores spoil both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, WORK, header, save_figure
from torch import nn

from fewshot import io
from fewshot.algorithms.base import Algorithm, Params, parameters_of
from fewshot.algorithms.lsa import InContext
from fewshot.config import TrainConfig
from fewshot.evaluate import evaluate_tasks, mean_ci95
from fewshot.regression_baselines import prompt_baselines, tuned_gradient_descent
from fewshot.runs import load_run
from fewshot.tasks.linear import FunctionTasks
from fewshot.train import Trainer

TEST_SEED = 424_242  # prompts no model trained on (training uses seeds below 10^7 + run seed)


def train(name: str, config: TrainConfig) -> tuple[nn.Module, dict]:
    """Trains into benchmarks/work/NAME; returns the model and its loss curve."""
    trainer = Trainer(config, WORK / name, progress=False, overwrite=True)
    model = trainer.run()
    metrics = io.read_jsonl(WORK / name / "metrics.jsonl")
    curve = [{"step": m["step"], "loss": m["loss"], "train_seconds": m["train_seconds"]} for m in metrics]
    model.eval()
    return model, {
        "steps": metrics[-1]["step"],
        "train_seconds": metrics[-1]["train_seconds"],
        "curve": curve,
    }


def errors(
    algorithm: Algorithm, model: nn.Module, params: Params, family: FunctionTasks, prompts: int
) -> np.ndarray:
    """Squared error of each prompt's query, divided by d (Garg et al.'s normalisation)."""
    return (
        evaluate_tasks(algorithm, model, family.task, prompts, params, progress=False, device="cpu")
        / family.dim
    )


def summary(values: np.ndarray) -> dict[str, float]:
    mean, ci95 = mean_ci95(values)
    return {"mean": mean, "ci95": ci95}


def error_curves(methods: dict, family: FunctionTasks, ks: range, prompts: int) -> dict[str, list[dict]]:
    """Per method, error / d at each k, every method on the same prompts; baselines tuned per k."""
    curves: dict[str, list[dict]] = {}
    for k in ks:
        at_k = dataclasses.replace(family, shots=k)
        entries = dict(methods)
        for name, baseline in prompt_baselines(at_k).items():
            entries[name] = (baseline, nn.Identity(), {})
        for name, (algorithm, model, params) in entries.items():
            curves.setdefault(name, []).append(
                {"k": k, **summary(errors(algorithm, model, params, at_k, prompts))}
            )
        print(f"  k={k:2d}: " + ", ".join(f"{n} {c[-1]['mean']:.3f}" for n, c in curves.items()), flush=True)
    return curves


def garg(args: argparse.Namespace) -> None:
    d = args.dim
    results = header("incontext_garg", args.seed, dim=d, steps=args.steps, minutes=args.minutes, prompts=args.prompts,
                     width=args.width, depth=args.depth, heads=args.heads, outer_lr=args.lr, batch=args.batch,
                     every=args.every, threads="1 per training process")  # fmt: skip
    base = dict(algorithm="transformer", dataset="linear", dim=d, shots=2 * d, queries=1, width=args.width,
                depth=args.depth, heads=args.heads, max_points=3 * d + 1, tasks_per_step=args.batch,
                outer_lr=args.lr, lr_schedule="constant", max_minutes=args.minutes, val_every=0,
                log_every=100, seed=args.seed, threads=1, steps=args.steps)  # fmt: skip
    variants = {
        "transformer, curriculum": TrainConfig.of(**base, curriculum="garg", curriculum_every=args.every),
        "transformer, no curriculum": TrainConfig.of(**base),
    }
    # the two trainings side by side, one core each (a model this small gains ~1.4x from a second thread, two
    # processes 2x): a child process per variant, then both models are read back from their run directories
    print(f"training both transformers, {args.steps} steps each (at most {args.minutes} minutes)", flush=True)
    children = [
        subprocess.Popen([sys.executable, __file__, "train-one", json.dumps(config.flat()), _work_name(name)])
        for name, config in variants.items()
    ]  # fmt: skip
    if any(child.wait() for child in children):
        raise SystemExit("a training process failed")
    models, results["training"] = {}, {}
    for name, config in variants.items():
        run = load_run(WORK / _work_name(name), "last")
        run.model.eval()
        models[name] = (InContext(), run.model, run.params)
        metrics = io.read_jsonl(WORK / _work_name(name) / "metrics.jsonl")
        curve = [{"step": m["step"], "loss": m["loss"], "train_seconds": m["train_seconds"]} for m in metrics]
        info = {"steps": metrics[-1]["step"], "train_seconds": metrics[-1]["train_seconds"], "curve": curve}
        results["training"][name] = info | {"config": config.flat()}
        print(f"  {name}: {info['steps']} steps in {info['train_seconds'] / 60:.1f} minutes", flush=True)

    test = FunctionTasks(dim=d, shots=0, queries=1, seed=TEST_SEED)
    print("error / d against k, in distribution", flush=True)
    results["in_distribution"] = error_curves(models, test, range(0, 2 * d + 1), args.prompts)

    best = "transformer, curriculum"
    model = {best: models[best]}
    ood = {
        "inputs x2": dataclasses.replace(test, scale=2.0),
        "inputs x3": dataclasses.replace(test, scale=3.0),
        "noisy labels (sd 1)": dataclasses.replace(test, noise=1.0),
        "skewed covariance": dataclasses.replace(test, skew=2.0),
    }
    results["out_of_distribution"] = {}
    for name, family in ood.items():
        print(f"error / d against k, {name}", flush=True)
        results["out_of_distribution"][name] = error_curves(
            model, family, range(0, 2 * d + 1, 2), args.prompts
        )
    print("error / d against k, prompts longer than in training", flush=True)
    results["out_of_distribution"]["longer prompts"] = error_curves(
        model, test, range(2 * d, 3 * d + 1, 2), args.prompts
    )
    results["goal"] = goal(results["in_distribution"], d)
    out = Path(args.out or RESULTS / "incontext_garg.json")
    io.write_json(out, results)
    plot_garg(results, out.with_suffix(".png"), out.with_name(out.stem + "_ood.png"))
    print(f"wrote {out}")


def _work_name(variant: str) -> str:
    return "incontext_" + variant.split(", ")[1].replace(" ", "_")


def train_one(config_json: str, name: str) -> None:
    """A child of ``garg``: trains one configuration on one thread into benchmarks/work/NAME."""
    torch.set_num_threads(1)
    config = TrainConfig.of(**json.loads(config_json))
    Trainer(config, WORK / name, progress=False, overwrite=True).run()


def goal(curves: dict[str, list[dict]], d: int) -> dict[str, object]:
    """The issue's goal, checked: within 20% of least squares at every k (where least squares' error is above
    0.01, else within 0.01 of it), and at k = d below half of 3-NN's and of averaging's."""
    ls = {p["k"]: p["mean"] for p in curves["least squares"]}
    out: dict[str, object] = {}
    for name, curve in curves.items():
        if not name.startswith("transformer"):
            continue
        worst = max(
            (p["mean"] / ls[p["k"]] if ls[p["k"]] > 0.01 else 1 + (p["mean"] - ls[p["k"]]) / 0.05, p["k"])
            for p in curve
        )  # fmt: skip
        at_d = next(p["mean"] for p in curve if p["k"] == d)
        knn = next(p["mean"] for p in curves["3-nearest neighbours"] if p["k"] == d)
        avg = next(p["mean"] for p in curves["averaging"] if p["k"] == d)
        out[name] = {
            "worst_ratio_to_least_squares": worst[0], "at_k": worst[1],
            "within_20_percent_everywhere": all(
                p["mean"] <= 1.2 * ls[p["k"]] or p["mean"] - ls[p["k"]] <= 0.01 for p in curve
            ),
            "at_k_d": at_d, "half_of_3nn": at_d < knn / 2, "half_of_averaging": at_d < avg / 2,
        }  # fmt: skip
    return out


def oswald(args: argparse.Namespace) -> None:
    d, shots = 10, 10
    seeds = [int(x) for x in args.seeds.split(",")]
    results = header("incontext_oswald", args.seed, dim=d, shots=shots, inputs="uniform", prompts=args.prompts,
                     outer_lr=args.lr, batch=args.batch, steps=args.steps, seeds=seeds,
                     threads=torch.get_num_threads())  # fmt: skip
    test = FunctionTasks(dim=d, shots=shots, queries=1, inputs="uniform", seed=TEST_SEED)
    results["layers"] = {}
    for layers in (1, 2, 3):
        gd = tuned_gradient_descent(test, layers)
        gd_err = errors(gd, nn.Identity(), {}, test, 10 * args.prompts) * d  # the plain squared error here
        gd_pred, gd_sens = predictions_and_sensitivities(gd, nn.Identity(), {}, test, args.prompts)
        for seed in seeds:  # the seed draws both the initial weights and the training prompts
            config = TrainConfig.of(algorithm="lsa", dataset="linear", dim=d, shots=shots, queries=1,
                                    inputs="uniform", layers=layers, tasks_per_step=args.batch, outer_lr=args.lr,
                                    lr_schedule="constant", steps=args.steps, val_every=0, log_every=50,
                                    seed=seed)  # fmt: skip
            print(
                f"training linear self-attention, {layers} layer(s), seed {seed}, {args.steps} steps",
                flush=True,
            )
            model, info = train(f"incontext_lsa{layers}_seed{seed}", config)
            params = parameters_of(model)
            # the losses on 10x as many prompts (cheap here), paired: the same prompts for both
            lsa_err = errors(InContext(), model, params, test, 10 * args.prompts) * d
            lsa_pred, lsa_sens = predictions_and_sensitivities(InContext(), model, params, test, args.prompts)
            cos = nn.functional.cosine_similarity
            row = info | {
                "layers": layers, "seed": seed, "gd_lr": gd.lr, "loss_prompts": 10 * args.prompts,
                "lsa_loss": summary(lsa_err), "gd_loss": summary(gd_err), "lsa_minus_gd": summary(lsa_err - gd_err),
                "prediction_cosine": float(cos(lsa_pred, gd_pred, dim=0)),
                "sensitivity_cosine": summary(cos(lsa_sens, gd_sens, dim=1).numpy()),
                "prediction_l2_distance": float((lsa_pred - gd_pred).norm() / math.sqrt(len(gd_pred))),
            }  # fmt: skip
            results["layers"][f"{layers}/{seed}"] = row
            print(f"  LSA {row['lsa_loss']['mean']:.4f} vs GD {row['gd_loss']['mean']:.4f} (paired difference "
                  f"{row['lsa_minus_gd']['mean']:+.4f} +- {row['lsa_minus_gd']['ci95']:.4f}); cosine of predictions "
                  f"{row['prediction_cosine']:.4f}, of sensitivities {row['sensitivity_cosine']['mean']:.4f}",
                  flush=True)  # fmt: skip
    out = Path(args.out or RESULTS / "incontext_oswald.json")
    io.write_json(out, results)
    plot_oswald(results, out.with_suffix(".png"))
    print(f"wrote {out}")


def predictions_and_sensitivities(
    algorithm: Algorithm, model: nn.Module, params: Params, family: FunctionTasks, prompts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's query prediction ``(P,)`` and its gradient with respect to the query input ``(P, d)``."""
    preds, sens = [], []
    for i in range(prompts):
        task = family.task(i)
        state = algorithm.adapt(model, params, task.support, 0)
        x = task.query.x.clone().requires_grad_(True)
        y = algorithm.predict(model, params, state, x).sum()
        (g,) = torch.autograd.grad(y, x)
        preds.append(y.detach().double())
        sens.append(g[0].double())
    return torch.stack(preds), torch.stack(sens)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    save_figure(fig, path)


COLOURS = {"transformer, curriculum": "C0", "transformer, no curriculum": "C1", "least squares": "C2",
           "ridge (Bayes-optimal)": "C7", "3-nearest neighbours": "C3", "averaging": "C4",
           "gradient descent, 1 step (best lr)": "C5"}  # fmt: skip


def _curves(ax, curves: dict[str, list[dict]]) -> None:
    for name, curve in curves.items():
        ks = [p["k"] for p in curve]
        ys = np.array([p["mean"] for p in curve])
        ci = np.array([p["ci95"] for p in curve])
        style = "-" if name.startswith("transformer") else "--"
        colour = COLOURS.get(name)
        ax.plot(ks, ys, style, marker="o", markersize=3, label=name, color=colour)
        ax.fill_between(ks, ys - ci, ys + ci, alpha=0.15, color=colour)
    ax.grid(alpha=0.3)


def plot_garg(results: dict, path: Path, ood_path: Path) -> None:
    plt = _plt()
    d = results["dim"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _curves(ax, results["in_distribution"])
    ax.set_ylim(0, 1.6)
    ax.axvline(d, color="grey", lw=0.8)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / d")
    ax.set_title(
        f"Linear functions, d = {d}; transformers trained "
        + " / ".join(
            f"{t['steps']:,} steps in {t['train_seconds'] / 60:.0f} min" for t in results["training"].values()
        ),
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    ood = results["out_of_distribution"]
    fig, axes = plt.subplots(1, len(ood), figsize=(3.6 * len(ood), 3.8))
    handles = {}
    for ax, (name, curves) in zip(axes, ood.items(), strict=True):
        _curves(ax, curves)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("k")
        ax.set_yscale("symlog", linthresh=0.1)  # linear near 0, where least squares reaches 0; log above
        ax.set_ylim(bottom=0)
        handles |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    axes[0].set_ylabel("squared error / d")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, ood_path)


def plot_oswald(results: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = ["-", ":", "-.", "--"]
    drawn = set()
    for row in results["layers"].values():
        layers, seed = row["layers"], row["seed"]
        colour = f"C{layers - 1}"
        ax.plot([p["step"] for p in row["curve"]], [p["loss"] for p in row["curve"]], styles[seed % 4], color=colour,
                label=f"LSA, {layers} layer{'s' if layers > 1 else ''}, seed {seed} (training loss)")  # fmt: skip
        if layers not in drawn:
            drawn.add(layers)
            ax.axhline(row["gd_loss"]["mean"], color=colour, ls="--", lw=1,
                       label=f"GD, {layers} step{'s' if layers > 1 else ''} at its best rate (test loss)")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("squared error of the query")
    ax.set_yscale("log")
    ax.set_title("Linear self-attention trained from random weights, d = 10, 10 examples", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def tables() -> str:
    """BENCHMARKS.md's tables, from the results files (so that no number is copied by hand)."""
    out = []
    path = RESULTS / "incontext_garg.json"
    if path.exists():
        r = json.loads(path.read_text())
        d, curves = r["dim"], r["in_distribution"]
        ks = [k for k in (0, 1, 2, d // 2, d - 1, d, d + 1, 3 * d // 2, 2 * d)]
        names = list(curves)
        out.append("| method | " + " | ".join(f"k = {k}" for k in ks) + " |")
        out.append("|---" * (len(ks) + 1) + "|")
        for name in names:
            at = {p["k"]: p for p in curves[name]}
            out.append(
                f"| {name} | " + " | ".join(f"{at[k]['mean']:.3f} ± {at[k]['ci95']:.3f}" for k in ks) + " |"
            )
        out.append("")
        for name, t in r["training"].items():
            out.append(f"- {name}: {t['steps']:,} steps in {t['train_seconds'] / 60:.1f} minutes")
        out.append("")
        for name, g in r["goal"].items():
            out.append(f"- {name}: goal {g}")
        out.append("")
        for case, curves in r["out_of_distribution"].items():
            model = next(n for n in curves if n.startswith("transformer"))
            ref = "ridge (Bayes-optimal)" if "ridge (Bayes-optimal)" in curves else "least squares"
            cells = [
                f"k={p['k']}: {p['mean']:.3f} vs {q['mean']:.3f}"
                for p, q in zip(curves[model], curves[ref], strict=True)
            ]
            out.append(f"| {case} | {ref} | " + "; ".join(cells) + " |")
        out.append("")
    path = RESULTS / "incontext_oswald.json"
    if path.exists():
        r = json.loads(path.read_text())
        out.append("| layers / seed | LSA loss | GD loss (best lr) | LSA - GD (paired) | cosine of predictions | "
                   "cosine of d y/d x_query | training |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|")
        for key, row in r["layers"].items():
            out.append(
                f"| {key} | {row['lsa_loss']['mean']:.4f} ± {row['lsa_loss']['ci95']:.4f} | "
                f"{row['gd_loss']['mean']:.4f} ± {row['gd_loss']['ci95']:.4f} (lr {row['gd_lr']:.3f}) | "
                f"{row['lsa_minus_gd']['mean']:+.4f} ± {row['lsa_minus_gd']['ci95']:.4f} | "
                f"{row['prediction_cosine']:.4f} | {row['sensitivity_cosine']['mean']:.4f} ± "
                f"{row['sensitivity_cosine']['ci95']:.4f} | {row['steps']:,} steps, {row['train_seconds']:.0f} s |"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if sys.argv[1:2] == ["train-one"]:
        return train_one(*sys.argv[2:4])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=("garg", "oswald", "plot", "tables"),
                        help="plot: redraw both from their JSON; tables: print BENCHMARKS.md's tables")  # fmt: skip
    parser.add_argument("--dim", type=int, default=10, help="garg: input dimension d")
    parser.add_argument(
        "--minutes", type=float, default=60.0, help="garg: at most this many training minutes each"
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--every", type=int, default=500, help="garg: steps per curriculum stage")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per model (garg 16000, oswald 4000)"
    )
    parser.add_argument("--lr", type=float, default=None, help="Adam's rate (garg and oswald 1e-3)")
    parser.add_argument("--batch", type=int, default=None, help="prompts per step (garg 64, oswald 256)")
    parser.add_argument("--prompts", type=int, default=1000, help="test prompts per k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1", help="oswald: training seeds per number of layers")
    parser.add_argument("--quick", action="store_true", help="write *_quick.json (git-ignored)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.which == "tables":
        return print(tables())
    if args.which == "plot":
        for name, draw in (("garg", plot_garg), ("oswald", plot_oswald)):
            path = RESULTS / f"incontext_{name}.json"
            if path.exists():
                results = json.loads(path.read_text())
                extra = (path.with_name(path.stem + "_ood.png"),) if name == "garg" else ()
                draw(results, path.with_suffix(".png"), *extra)
        return
    defaults = {"garg": (1e-3, 64, 16_000), "oswald": (1e-3, 256, 4000)}[args.which]
    args.lr = args.lr or defaults[0]
    args.batch = args.batch or defaults[1]
    args.steps = args.steps or defaults[2]
    if args.quick and not args.out:
        args.out = str(RESULTS / f"incontext_{args.which}_quick.json")
    start = time.time()
    (garg if args.which == "garg" else oswald)(args)
    print(f"{(time.time() - start) / 60:.1f} minutes in all")


if __name__ == "__main__":
    main()
