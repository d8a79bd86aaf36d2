"""Build the three networks shipped for ``fewshot serve`` into ``src/fewshot/data/web/``.

    .venv/bin/python scripts/build_web_models.py            # about 10 minutes on 2 cores
    .venv/bin/python scripts/build_web_models.py --quick    # a smoke run (bad models) into /tmp/fewshot-web

Everything is seeded and runs a fixed number of steps (never a wall-clock budget), so a rerun on the same
machine and torch version writes the same weights (checked with --quick: the files differ only in the training
times recorded in their metadata).

* MAML on sinusoids: the 1-40-40-1 MLP, K = 10 support and 10 query points, 25 tasks per step, one inner SGD
  step of inner_lr 0.01, Adam 1e-3 (Finn et al. 2017, section 5.1; they ran 70,000 steps).
* The "pretrained" contrast: the same MLP fitted to all training tasks' points as one regression problem
  (:func:`fewshot.baselines.pretrain_jointly`), as many steps and tasks.
* ProtoNet on Omniglot: conv4, 60-way 5-shot 5-query episodes (Snell et al. 2017), Adam 1e-3, bfloat16 autocast,
  on the embedded copy's training classes (Vinyals split).

It then measures what the pages show: sinusoid query MSE after 0, 1, 5 and 10 steps (inner_lr 0.01) on 600
held-out tasks for both MLPs, and ProtoNet's 5-way 1-shot and 5-shot accuracy on 600 test episodes of held-out
alphabets (:func:`fewshot.evaluate.evaluate`). The numbers are printed and stored in each file's metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from fewshot import ProtoNet, evaluate, omniglot  # noqa: E402
from fewshot.algorithms.maml import MAML  # noqa: E402
from fewshot.baselines import pretrain_jointly  # noqa: E402
from fewshot.config import TrainConfig  # noqa: E402
from fewshot.evaluate import evaluate_regression  # noqa: E402
from fewshot.tasks.regression import Sinusoid  # noqa: E402
from fewshot.train import Trainer  # noqa: E402
from fewshot.web.models import (  # noqa: E402
    MAML_FILE,
    OMNIGLOT_FILE,
    PRETRAINED_FILE,
    WEB_DATA,
    save_model,
    sinusoid_mlp,
)

INNER_LR = 0.01  # Finn et al. 2017, sinusoid regression
SHOTS = 10
TEST_STEPS = (0, 1, 5, 10)
TEST_SEED = 2_000_003  # the test stream of fewshot.train.load_split for sinusoids: never a training task


def sinusoid_mse(model: torch.nn.Module, tasks: int) -> dict[str, list[float]]:
    """Query MSE (mean, 95% CI) after each of TEST_STEPS SGD steps of inner_lr on held-out tasks."""
    family = Sinusoid(shots=SHOTS, queries=SHOTS, seed=TEST_SEED)
    out = {}
    for steps in TEST_STEPS:
        r = evaluate_regression(
            MAML(inner_lr=INNER_LR, inner_steps=steps), model, family, tasks, progress=False
        )
        out[str(steps)] = [round(r.mean, 4), round(r.ci95, 4)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=WEB_DATA)
    parser.add_argument(
        "--sinusoid-steps", type=int, default=20000, help="meta-steps of 25 tasks (both MLPs)"
    )
    parser.add_argument("--protonet-steps", type=int, default=2000, help="60-way 5-shot episodes")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes / tasks for the numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, into /tmp/fewshot-web")
    args = parser.parse_args()
    if args.quick:
        args.out, args.sinusoid_steps, args.protonet_steps, args.episodes = (
            Path("/tmp/fewshot-web"),
            50,
            20,
            50,
        )
    work = Path(tempfile.mkdtemp(prefix="fewshot-web-build-"))

    # 1. MAML on sinusoids (one thread: a 1-40-40-1 MLP is faster on one than on two)
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = TrainConfig.of(
        algorithm="maml", dataset="sinusoid", shots=SHOTS, queries=SHOTS, steps=args.sinusoid_steps,
        tasks_per_step=25, inner_lr=INNER_LR, inner_steps=1, lr_schedule="constant", route="vmap",
        val_every=0, log_every=1000, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(config, work / "maml", progress=False)
    maml = trainer.run()
    maml_seconds = time.perf_counter() - start

    # 2. The jointly pretrained MLP: the same tasks (seed, step -> tasks), no learning to adapt
    start = time.perf_counter()
    torch.manual_seed(args.seed)  # nn.Module initialisation, as the trainer does
    pretrained = pretrain_jointly(
        sinusoid_mlp(), Sinusoid(shots=SHOTS, queries=SHOTS, seed=args.seed), args.sinusoid_steps
    )
    pretrained_seconds = time.perf_counter() - start
    maml_mse, pretrained_mse = sinusoid_mse(maml, args.episodes), sinusoid_mse(pretrained, args.episodes)
    print(f"sinusoid MLPs: {args.sinusoid_steps} steps of 25 tasks, K={SHOTS}; query MSE on {args.episodes} "
          f"held-out tasks after k SGD steps of inner_lr {INNER_LR} (mean, 95% CI):")  # fmt: skip
    for k in TEST_STEPS:
        print(f"  {k:2d} steps: MAML {maml_mse[str(k)][0]:.3f} +- {maml_mse[str(k)][1]:.3f}   "
              f"pretrained {pretrained_mse[str(k)][0]:.3f} +- {pretrained_mse[str(k)][1]:.3f}")  # fmt: skip
    print(f"  training: MAML {maml_seconds:.0f} s, pretrained {pretrained_seconds:.0f} s", flush=True)
    sinusoid_training = {
        "shots": SHOTS, "queries": SHOTS, "tasks_per_step": 25, "steps": args.sinusoid_steps, "outer_lr": 1e-3,
        "inner_lr": INNER_LR, "seed": args.seed, "test_tasks": args.episodes, "test_seed": TEST_SEED,
    }  # fmt: skip
    save_model(args.out / MAML_FILE.name, maml, {
        "training": sinusoid_training | {"method": "maml", "inner_steps": 1, "seconds": round(maml_seconds)},
        "measured": {"query_mse_after_steps": maml_mse},
    })  # fmt: skip
    save_model(args.out / PRETRAINED_FILE.name, pretrained, {
        "training": sinusoid_training | {"method": "pretrain_jointly", "seconds": round(pretrained_seconds)},
        "measured": {"query_mse_after_steps": pretrained_mse},
    })  # fmt: skip

    # 3. ProtoNet on Omniglot (both cores)
    torch.set_num_threads(2)
    start = time.perf_counter()
    config = TrainConfig.of(
        algorithm="protonet", dataset="omniglot", ways=60, shots=5, queries=5, steps=args.protonet_steps,
        bf16=True, val_every=0, log_every=100, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(config, work / "protonet", progress=False)
    conv4 = trainer.run().to(memory_format=torch.contiguous_format)
    protonet_seconds = time.perf_counter() - start
    test = omniglot("test")
    results = {
        k: evaluate(ProtoNet(), conv4, test, 5, k, 15, args.episodes, seed=0, progress=False) for k in (1, 5)
    }
    print(f"ProtoNet conv4: {args.protonet_steps} episodes of 60-way 5-shot in {protonet_seconds:.0f} s (bf16); "
          "test classes (held-out alphabets):")  # fmt: skip
    for r in results.values():
        print(f"  {r}")
    save_model(args.out / OMNIGLOT_FILE.name, conv4, {
        "training": {k: v for k, v in dataclasses.asdict(config).items() if k in (
            "ways", "shots", "queries", "steps", "outer_lr", "lr_schedule", "lr_decay_every", "bf16", "seed")}
        | {"method": "protonet", "dataset": "omniglot (embedded, Vinyals train split)",
           "seconds": round(protonet_seconds)},
        "measured": {f"5w{k}s": {"mean": round(r.mean, 4), "ci95": round(r.ci95, 4), "episodes": r.episodes}
                     for k, r in results.items()},
    })  # fmt: skip
    print(f"wrote {args.out}/{{{MAML_FILE.name}, {PRETRAINED_FILE.name}, {OMNIGLOT_FILE.name}}}")


if __name__ == "__main__":
    main()
