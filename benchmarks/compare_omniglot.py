"""The method comparison on Omniglot (Vinyals split, 28x28): every family and baseline on identical episodes.

    .venv/bin/python benchmarks/compare_omniglot.py --minutes 5          # train what is missing, then compare
    .venv/bin/python benchmarks/compare_omniglot.py --minutes 0.2 --episodes 20 --work /tmp/cmp   # smoke run
    .venv/bin/python benchmarks/compare_omniglot.py --minutes 2 --methods snail icl mann --append   # add methods

Methods: train from scratch (a fresh conv4 trained on each support set), fine-tuning (Baseline: supervised
pretraining on all 4112 training classes, then a new linear head), nearest neighbour in pixels and in the
Baseline's embedding, ProtoNet, Matching, Relation, Siamese, MAML, FOMAML and Reptile, and the model-based
SNAIL, in-context transformer and MANN.

Each trained method gets ``--minutes`` of training (validation excluded) in its paper's 1-shot training setting
(ProtoNet 60-way, Matching / Relation / Siamese 20-way, MAML / FOMAML / Reptile 5-way with 32 tasks per step,
1 inner step 0.4; Reptile 5 SGD steps of 0.1 with Adam outside), and one model per method is tested on both 5-way 1-shot and 5-way
5-shot. A run directory already in ``--work`` (``benchmarks/work/compare``) is reused, not retrained; pass
``--retrain NAME`` to train one again. ``--reuse NAME=RUN`` takes an existing run instead (e.g. the 60-minute
MAML of ``maml_omniglot.py``).

Every method is then scored by :func:`fewshot.compare.compare` on the same ``--episodes`` test episodes (seed
``--seed``): mean and 95% CI, paired difference to the best with its CI, adaptation steps, time per episode
and parameter count. Writes ``benchmarks/results/compare_omniglot.json`` and, per setting,
``compare_omniglot_5w{1,5}s.md`` / ``.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.compare import bar_chart, compare, load_method, markdown, paired
from fewshot.config import TrainConfig
from fewshot.datasets import load_split

EPISODIC = {  # name -> training settings beyond the defaults (1-shot, as in each paper's 1-shot runs)
    "protonet": dict(algorithm="protonet", ways=60, shots=1, queries=5, bf16=True),
    "matching": dict(algorithm="matching", ways=20, shots=1, queries=5, bf16=True),
    "relation": dict(algorithm="relation", ways=20, shots=1, queries=5, outer_lr=1e-3, bf16=True),
    "siamese": dict(algorithm="siamese", ways=20, shots=1, queries=5, bf16=True),
    "maml": dict(algorithm="maml", ways=5, shots=1, queries=15, tasks_per_step=32, inner_lr=0.4, bf16=False),
    "fomaml": dict(algorithm="fomaml", ways=5, shots=1, queries=15, tasks_per_step=32, inner_lr=0.4),
    # the paper's inner loop is Adam (lr 1e-3); here plain SGD steps (inner_lr 0.1), and Adam outside
    "reptile": dict(algorithm="reptile", ways=5, shots=1, queries=15, tasks_per_step=32, inner_lr=0.1,
                    inner_steps=5),
    "baseline": dict(algorithm="baseline", batch_size=64, bf16=True),
    # the model-based family: SNAIL in its 1-shot setting, the in-context transformer on 1 to 5 shots per task
    # (one network for both shot counts), the MANN on 50-image sequences (10 of each class) at 28x28
    "snail": dict(algorithm="snail", ways=5, shots=1, queries=5, tasks_per_step=16, bf16=True),
    "icl": dict(algorithm="icl", ways=5, shots=5, queries=5, tasks_per_step=8, bf16=True),
    "mann": dict(algorithm="mann", ways=5, shots=5, queries=5, tasks_per_step=16),
}  # fmt: skip
ORDER = ["scratch", "baseline", "pixel-nn", "baseline-nn", "protonet", "matching", "relation", "siamese",
         "maml", "fomaml", "reptile", "snail", "icl", "mann"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per trained method")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--methods", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--work", type=Path, default=WORK / "compare", help="run directories (reused)")
    parser.add_argument("--retrain", nargs="*", default=[], choices=sorted(EPISODIC))
    parser.add_argument("--reuse", nargs="*", default=[], metavar="NAME=RUN", help="take this run for NAME")
    parser.add_argument("--out", type=Path, default=RESULTS / "compare_omniglot.json")
    parser.add_argument("--append", action="store_true",
                        help="score only --methods and add them to the tables already in --out (the same episodes: "
                             "they depend on the seed alone), with paired differences to the stored best")  # fmt: skip
    args = parser.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse)

    results = header("compare_omniglot", args.seed, minutes_per_model=args.minutes, trained={}, tables={})
    if args.append:
        old = json.loads(args.out.read_text())
        appended = {"command": results["command"], "env": results["env"], "minutes_per_model": args.minutes}
        results = old | {"appended": [*old.get("appended", []), appended]}
    runs: dict[str, str] = {}
    for name in {m.removesuffix("-nn") for m in args.methods} & set(EPISODIC):
        if name in reuse:
            runs[name] = reuse[name]
            results["trained"][name] = {"reused": reuse[name]}
            continue
        run_dir = args.work / name
        if name in args.retrain and run_dir.exists():
            shutil.rmtree(run_dir)
        if not (run_dir / "best.safetensors").is_file():
            config = TrainConfig.of(
                **EPISODIC[name], steps=1_000_000, max_minutes=args.minutes, val_every=100, val_episodes=100,
                val_ways=5, val_shots=1, log_every=10, seed=args.seed,
            )  # fmt: skip
            print(f"training {name} for {args.minutes} min -> {run_dir}", flush=True)
            trained = train_with_curve(config, run_dir)
            results["trained"][name] = {k: trained[k] for k in ("steps", "train_seconds", "config")}
        else:
            results["trained"][name] = {"reused": str(run_dir)}
        runs[name] = str(run_dir)

    specs = []
    for m in args.methods:
        if m in ("pixel-nn", "scratch"):
            specs.append(m)
        elif m == "baseline-nn":
            specs.append(f"baseline-nn={runs['baseline']}:nn")
        else:
            specs.append(f"{m}={runs[m]}")
    data = load_split(TrainConfig(), "test")
    methods = [load_method(spec, 5, data.image_shape) for spec in specs]
    for shots in args.shots:
        print(
            f"comparing {len(methods)} methods at 5-way {shots}-shot on {args.episodes} episodes", flush=True
        )
        table = compare(methods, data, 5, shots, 15, args.episodes, args.seed, progress=False)
        if args.append:
            table = add_rows(results["tables"][f"5w{shots}s"], table)
        results["tables"][f"5w{shots}s"] = table
        stem = args.out.with_name(f"{args.out.stem}_5w{shots}s")
        io.write_text(stem.with_suffix(".md"), markdown(table))
        bar_chart(table, stem.with_suffix(".png"))
        io.write_json(args.out, results)
        print(markdown(table), flush=True)


def add_rows(old: dict, new: dict) -> dict:
    """``old``'s table with ``new``'s rows added (replacing rows of the same method), every paired difference
    taken again against the best method of the union."""
    if (old["episodes"], old["seed"], old["queries"]) != (new["episodes"], new["seed"], new["queries"]):
        raise SystemExit("--append needs the stored tables' --episodes and --seed (the same episodes)")
    names = {r["method"] for r in new["rows"]}
    rows = [r for r in old["rows"] if r["method"] not in names] + new["rows"]
    best = max(rows, key=lambda r: r["mean"])
    for r in rows:
        diff, ci = paired(r["accuracies"], best["accuracies"])
        r["diff_to_best"], r["diff_to_best_ci95"] = diff, (0.0 if r is best else ci)
    return old | {"best": best["method"], "rows": rows}


if __name__ == "__main__":
    main()
