"""Lake et al.'s within-alphabet one-shot protocol on Omniglot: 20-way 1-shot, the 20 characters of an episode from
one of the 20 evaluation alphabets, training on the 30 background alphabets only.

    .venv/bin/python benchmarks/lake_within_alphabet.py --minutes 12                # train what is missing, test
    .venv/bin/python benchmarks/lake_within_alphabet.py --minutes 0.1 --episodes 20 --work /tmp/lake   # smoke run

Published errors on this protocol (Lake et al. 2019, "The Omniglot challenge: a 3-year progress report", table 1):
Prototypical Networks 13.7%, Siamese networks (Koch et al. 2015) 8.0%, people 4.5%, Bayesian program learning
3.3%.

Models (28x28 images, the embedded copy; conv4; bfloat16; ``--minutes`` of training each, no validation: the
evaluation alphabets are the test set and nothing else is held out, so the last weights are tested):

* ``protonet``: ProtoNet trained on 20-way 1-shot episodes drawn within one background alphabet (5 queries per
  character);
* ``protonet-rot``: the same with every background character also turned by 90, 180 and 270 degrees as new
  characters (``--rotations``; an alphabet's rotated characters stay in its alphabet);
* ``protonet-rot-60way``: as ``protonet-rot`` with Snell et al.'s 60-way episodes from all background characters
  (not within one alphabet), tested within one alphabet like the others.

Test: ``--episodes`` episodes (seed ``--seed``) of 20 evaluation characters from one alphabet, one drawing each
as the support and one other drawing each as the query (Lake's 20 test drawings per run). Writes
``benchmarks/results/lake_within_alphabet.json``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import RESULTS, WORK, header, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.evaluate import evaluate_run

PUBLISHED = {
    "Prototypical Networks": 13.7,
    "Siamese networks": 8.0,
    "people": 4.5,
    "Bayesian program learning": 3.3,
}
LAKE = dict(split_scheme="lake", train_split="background", val_split="evaluation", test_split="evaluation",
            within="alphabet", val_every=0, algorithm="protonet", ways=20, shots=1, queries=5, bf16=True)  # fmt: skip
# the last: Snell et al.'s 60-way training episodes from all background characters (not within one alphabet)
MODELS = {"protonet": {}, "protonet-rot": {"rotations": True},
          "protonet-rot-60way": {"rotations": True, "within": "", "ways": 60}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=12.0, help="training time per model")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK / "lake", help="run directories (reused)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "lake_within_alphabet.json")
    args = parser.parse_args()

    results = header("lake_within_alphabet", args.seed, minutes_per_model=args.minutes, published_error=PUBLISHED,
                     trained={}, test={})  # fmt: skip
    for name, extra in MODELS.items():
        run_dir = args.work / name
        if args.retrain and run_dir.exists():
            shutil.rmtree(run_dir)
        if not (run_dir / "model.safetensors").is_file():
            config = TrainConfig.of(
                **(LAKE | extra), steps=1_000_000, max_minutes=args.minutes, seed=args.seed
            )
            print(f"training {name} for {args.minutes} min -> {run_dir}", flush=True)
            trained = train_with_curve(config, run_dir)
            results["trained"][name] = {k: trained[k] for k in ("steps", "train_seconds", "config")}
        else:
            results["trained"][name] = {"reused": str(run_dir)}
        r = evaluate_run(
            run_dir,
            20,
            (1,),
            args.episodes,
            args.seed,
            checkpoint="last",
            queries=1,
            progress=False,
            within="alphabet",
        )[0]
        results["test"][name] = r.to_dict() | {"error": 100 * (1 - r.mean), "error_ci95": 100 * r.ci95}
        print(
            f"{name}: error {100 * (1 - r.mean):.2f} +- {100 * r.ci95:.2f} % ({args.episodes} episodes)",
            flush=True,
        )
        io.write_json(args.out, results)


if __name__ == "__main__":
    main()
