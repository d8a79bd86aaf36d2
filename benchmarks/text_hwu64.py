"""Few-shot intent detection on HWU64 (Liu et al. 2019; 64 intents, CC BY 4.0) over the all-MiniLM-L6-v2 encoder.

    .venv/bin/python benchmarks/text_hwu64.py                              # train what is missing, compare
    .venv/bin/python benchmarks/text_hwu64.py --minutes 0.2 --episodes 30 --work /tmp/hwu   # smoke run

The 64 intents (every utterance of ../shared/data/hwu64's train, valid and test files, pooled) are split into
meta-training, validation and test intents by fewshot's seeded class split (``--split-seed``; 20% validation, 20%
test: 38 / 13 / 13 intents). Every utterance is embedded once by the packaged sentence encoder (frozen; cached).

Methods, all scored by :func:`fewshot.compare.compare` on the same ``--episodes`` test episodes per setting (5-way
and 10-way, 1-shot and 5-shot, 15 queries per intent):

* ``protonet``: ProtoNet on the frozen encoder, preset ``protonet-text`` (a residual MLP that starts as the
  identity, TADAM's metric scale 10, Adam 1e-4), trained ``--minutes`` on 10-way 5-shot episodes;
* ``maml-5w`` / ``maml-10w``: MAML (second order) with a ``ways``-way head on the same residual MLP, preset
  ``maml-text``, trained ``--minutes`` each on 5-way and 10-way 1-shot episodes (a head fixes the ways);
* ``input-mean``: nearest class mean of the raw sentence embeddings (no training);
* ``input-nn``: nearest neighbour of the raw sentence embeddings;
* ``linear-probe``: a linear head trained on the raw embeddings of each support set (100 Adam steps of 0.01);
* ``protonet-top2``: ``protonet`` with the encoder's last two transformer layers meta-trained too
  (``--finetune-layers 2``). Its inputs are token states, not embeddings, so it is scored by the same function on
  its own copy of the test data: the same episodes (they depend on the seed and the labels alone), and its paired
  differences are taken against the other rows' per-episode accuracies.

Writes ``benchmarks/results/text_hwu64.json`` and per setting ``text_hwu64_<w>w<k>s.md``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import RESULTS, ROOT, WORK, header, train_with_curve
from compare_omniglot import add_rows

from fewshot import io
from fewshot.compare import compare, load_method, markdown
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.presets import PRESETS

HWU64 = ROOT.parent / "shared" / "data" / "hwu64"
TRAINED = {  # name -> (preset, settings beyond it)
    "protonet": ("protonet-text", dict(ways=10, shots=5, queries=5)),
    "maml-5w": ("maml-text", dict(ways=5, shots=1, queries=15)),
    "maml-10w": ("maml-text", dict(ways=10, shots=1, queries=15)),
    # the encoder's last two layers meta-trained too (their inputs, the token states below them, cached)
    "protonet-top2": ("protonet-text", dict(ways=10, shots=5, queries=5, finetune_layers=2)),
}
BUILT_IN = ("input-mean", "input-nn", "linear-probe")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=HWU64, help="HWU64's folder (train/valid/test)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per trained method")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of the test episodes")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the intent split")
    parser.add_argument("--work", type=Path, default=WORK / "text_hwu64", help="run directories (reused)")
    parser.add_argument("--retrain", action="store_true", help="train every method again")
    parser.add_argument("--out", type=Path, default=RESULTS / "text_hwu64.json")
    args = parser.parse_args()

    data_settings = dict(dataset="text", data_root=str(args.data_root), split_seed=args.split_seed)
    results = header("text_hwu64", args.seed, minutes_per_model=args.minutes, trained={}, tables={})
    runs = {}
    for name, (preset, extra) in TRAINED.items():
        run_dir = args.work / name
        if args.retrain and run_dir.exists():
            shutil.rmtree(run_dir)
        if not (run_dir / "best.safetensors").is_file():
            settings = PRESETS[preset].settings | data_settings | extra | dict(
                steps=1_000_000, max_minutes=args.minutes, val_every=250, val_episodes=200, val_ways=extra["ways"],
                val_shots=extra["shots"], seed=args.seed,
            )  # fmt: skip
            config = TrainConfig.of(**settings)
            print(f"training {name} ({preset}) for {args.minutes} min -> {run_dir}", flush=True)
            trained = train_with_curve(config, run_dir)
            results["trained"][name] = {k: trained[k] for k in ("steps", "train_seconds", "config", "curve")}
        else:
            results["trained"][name] = {"reused": str(run_dir)}
        runs[name] = str(run_dir)

    data = load_split(TrainConfig.of(**data_settings), "test")
    results["intents"] = {split: load_split(TrainConfig.of(**data_settings), split).class_names
                          for split in ("train", "val", "test")}  # fmt: skip
    top_data = load_split(TrainConfig.of(**data_settings, finetune_layers=2), "test")
    assert top_data.labels.tolist() == data.labels.tolist()  # the same utterances: the same episodes
    for ways in (5, 10):
        specs = ["protonet=" + runs["protonet"], f"maml={runs[f'maml-{ways}w']}", *BUILT_IN]
        methods = [load_method(spec, ways, data.image_shape) for spec in specs]
        top = load_method("protonet-top2=" + runs["protonet-top2"], ways, top_data.image_shape)
        for shots in (1, 5):
            print(f"comparing at {ways}-way {shots}-shot on {args.episodes} episodes", flush=True)
            table = compare(methods, data, ways, shots, 15, args.episodes, args.seed, progress=False)
            table = add_rows(
                table, compare([top], top_data, ways, shots, 15, args.episodes, args.seed, progress=False)
            )
            results["tables"][f"{ways}w{shots}s"] = table
            io.write_text(args.out.with_name(f"{args.out.stem}_{ways}w{shots}s.md"), markdown(table))
            io.write_json(args.out, results)
            print(markdown(table), flush=True)


if __name__ == "__main__":
    main()
