"""LEO on the frozen embedding of fewshot's pretrained Baseline, Omniglot 5-way 1-shot and 5-shot.

    .venv/bin/python benchmarks/leo_omniglot.py                   # Baseline 10 min, LEO 5 min per setting
    .venv/bin/python benchmarks/leo_omniglot.py --baseline-minutes 0.2 --minutes 0.2 --episodes 20 \\
        --out /tmp/leo.json                                        # smoke run

1. The Baseline (Chen et al. 2019): conv4 trained by ordinary classification over all 4112 training classes of
   the Vinyals split (28x28, batches of 64, bfloat16 autocast) for ``--baseline-minutes``; its best-validation
   checkpoint is the frozen embedding (64 dimensions: conv4 pools 28x28 images to 1x1; never updated after).
2. LEO (Rusu et al. 2019) on that embedding (``--embedding RUN``): 16-d codes (the paper: 64-d codes over
   640-d features; a code as large as the features would leave nothing to compress), otherwise the authors'
   defaults (5 code steps, 5 weight steps, 12 tasks a step, Adam 1e-4; dropout 0.5 on the features), one model
   per shot count, ``--minutes`` each.
3. On the same ``--episodes`` test episodes (15 queries per class, seed ``--seed``) of each setting, through
   ``fewshot.compare``: LEO; the nearest class mean (ProtoNet's rule, no meta-training), 1-nearest neighbour
   and a fine-tuned linear head (the Baseline itself) on the same embedding; paired differences to the best.

For context, LEO's paper reports 61.76 / 77.59 on miniImageNet 5-way 1-shot / 5-shot (WRN-28-10 features), and
fewshot's meta-trained ProtoNet reaches 98.73 / 99.54 here (``protonet_omniglot.json``). Results:
``benchmarks/results/leo_omniglot.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.compare import compare, load_method, markdown
from fewshot.config import TrainConfig
from fewshot.datasets import load_split

PAPER = {1: 61.76, 5: 77.59}  # Rusu et al. 2019, Table 1, miniImageNet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-minutes", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=5.0, help="LEO training time per shot count")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--reuse-baseline", action="store_true", help="keep the Baseline run already in work/"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "leo_omniglot.json")
    args = parser.parse_args()

    results = header("leo_omniglot", args.seed, baseline_minutes=args.baseline_minutes, minutes=args.minutes,
                     trained={}, tables={}, paper_miniimagenet=PAPER)  # fmt: skip
    base_dir = WORK / "leo-baseline"
    if not (args.reuse_baseline and (base_dir / "best.safetensors").is_file()):
        config = TrainConfig.of(algorithm="baseline", batch_size=64, bf16=True, steps=1_000_000,
                                max_minutes=args.baseline_minutes, val_every=500, val_episodes=200,
                                seed=args.seed)  # fmt: skip
        print(f"training the Baseline for {args.baseline_minutes} min -> {base_dir}", flush=True)
        results["trained"]["baseline"] = train_with_curve(config, base_dir)
    for shots in args.shots:
        run_dir = WORK / f"leo-{shots}shot"
        config = TrainConfig.of(algorithm="leo", embedding=str(base_dir), ways=5, shots=shots, queries=15,
                                tasks_per_step=12, latent_dim=16, outer_lr=1e-4, lr_schedule="constant", steps=1_000_000,
                                max_minutes=args.minutes, val_every=200, val_episodes=200, val_ways=5,
                                val_shots=shots, seed=args.seed)  # fmt: skip
        print(f"training LEO {shots}-shot for {args.minutes} min -> {run_dir}", flush=True)
        results["trained"][f"leo-{shots}shot"] = train_with_curve(config, run_dir)
        data = load_split(TrainConfig.of(algorithm="baseline"), "test")  # Omniglot's test classes
        specs = [
            f"leo={run_dir}",
            f"class-mean={base_dir}:class-mean",
            f"nn={base_dir}:nn",
            f"finetune={base_dir}",
        ]
        methods = [load_method(spec, 5, data.image_shape) for spec in specs]
        table = compare(methods, data, 5, shots, 15, args.episodes, args.seed, progress=False)
        results["tables"][f"5w{shots}s"] = table
        print(markdown(table), flush=True)
        io.write_json(args.out, results)


if __name__ == "__main__":
    main()
