"""MAML on Omniglot (Vinyals split, 28x28): accuracy against training time, beside Finn et al. 2017.

    .venv/bin/python benchmarks/maml_omniglot.py --minutes 60          # 5-way 1-shot, the issue's target
    .venv/bin/python benchmarks/maml_omniglot.py --setting 20w1s --minutes 60
    .venv/bin/python benchmarks/maml_omniglot.py --minutes 1 --test-episodes 20   # smoke run

Paper settings (Finn et al. 2017, section 5.2 and appendix A.1): 5-way 1-shot with inner step 0.4, 1 step,
32 tasks per meta-step; 20-way 1-shot with inner step 0.1, 5 steps, 16 tasks; Adam outer_lr 1e-3; tested with
10 inner steps. conv4 with BatchNorm on batch statistics (no running statistics), 15 queries per class here.
Validation uses the training setting (100 episodes of
the validation classes); the checkpoint with the best validation accuracy is tested on 600 episodes of the test classes.

Writes benchmarks/results/maml_omniglot_<setting>.json (`_bf16` added with `--bf16`) and a curve PNG beside it.
"""

from __future__ import annotations

import argparse

from common import RESULTS, WORK, header, plot_curves, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate
from fewshot.runs import load_run

SETTINGS = {  # name -> ways, shots, inner_lr, inner_steps, tasks_per_step, paper accuracy (Finn et al. Table 1)
    "5w1s": (5, 1, 0.4, 1, 32, 98.7),
    "20w1s": (20, 1, 0.1, 5, 16, 95.8),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="5w1s")
    parser.add_argument("--minutes", type=float, default=60.0, help="training time")
    parser.add_argument("--algorithm", default="maml", help="maml, fomaml, ... (any gradient-based one)")
    parser.add_argument("--route", default="auto", choices=["auto", "autograd", "loop", "threads", "vmap"])
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    ways, shots, inner_lr, inner_steps, tasks_per_step, paper = SETTINGS[args.setting]
    tag = "_bf16" if args.bf16 else ""  # a bfloat16 run is kept beside the float32 one, not over it
    out = RESULTS / f"{args.algorithm}_omniglot_{args.setting}{tag}.json"

    config = TrainConfig.of(
        algorithm=args.algorithm, ways=ways, shots=shots, queries=15, steps=1_000_000, tasks_per_step=tasks_per_step,
        max_minutes=args.minutes, inner_lr=inner_lr, inner_steps=inner_steps, test_inner_steps=10,
        lr_schedule="constant", route=args.route, val_every=args.val_every, val_episodes=100, val_ways=ways, val_shots=shots,
        bf16=args.bf16,
        log_every=10, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    run_dir = WORK / f"{args.algorithm}-{args.setting}{tag}"
    print(f"training {args.algorithm} {args.setting} for {args.minutes} min -> {run_dir}", flush=True)
    results = header(f"{args.algorithm}_omniglot", args.seed, setting=args.setting, paper=paper)
    results["model"] = train_with_curve(config, run_dir)
    run = load_run(run_dir, "best")
    model, config = run.model, run.config
    r = evaluate(run.algorithm(), model, load_split(config, "test"), ways, shots, 15,
                 args.test_episodes, args.seed, params=run.params, progress=False)  # fmt: skip
    results["test"] = {"mean": r.mean, "ci95": r.ci95, "episodes": r.episodes, "test_inner_steps": 10}
    io.write_json(out, results)
    plot_curves({f"{args.algorithm} {args.setting} (validation, 10 test steps)": results["model"]},
                out.with_suffix(".png"), f"{args.algorithm}, Omniglot {args.setting}")  # fmt: skip
    print(f"{r}   (paper {paper}); trained {results['model']['steps']} steps in "
          f"{results['model']['train_seconds'] / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
