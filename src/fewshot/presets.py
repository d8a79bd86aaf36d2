"""Named settings from the literature, and configuration files.

A preset is a partial :class:`~fewshot.train.TrainConfig`: the values a paper states, everything else at its
default. Settings are layered, later layers winning: defaults < preset < config file < command-line flags.

A config file is JSON (or TOML on Python 3.11+), flat, with the same keys as the command-line flags
(underscores) and an optional ``preset`` key::

    {"preset": "maml-omniglot-5w1s", "max_minutes": 60, "bf16": true}

Unknown presets and keys, and values of the wrong type, are refused with the valid choices.
"""

from __future__ import annotations

import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Preset:
    source: str  # the paper, with the section or table the values come from
    summary: str
    settings: dict[str, Any] = field(default_factory=dict)


_MAML_5W = dict(algorithm="maml", ways=5, shots=1, queries=15, tasks_per_step=32, inner_lr=0.4, inner_steps=1,
                test_inner_steps=10, lr_schedule="constant", outer_lr=1e-3, val_ways=5, val_shots=1)  # fmt: skip
_SINE = dict(algorithm="maml", dataset="sinusoid", shots=10, queries=10, tasks_per_step=25, inner_lr=0.01, inner_steps=1,
             test_inner_steps=10, lr_schedule="constant", outer_lr=1e-3, steps=70_000, route="vmap")  # fmt: skip

# RL² as benchmarks/bandits.py trains it
_RL2 = dict(algorithm="rl2", hidden=128, tasks_per_step=256, outer_lr=3e-3, gamma=0.9, gae_lambda=0.95, entropy=0.05,
            entropy_final=0.005, entropy_steps=4000, lr_schedule="constant", val_every=250, val_episodes=300)  # fmt: skip

PRESETS: dict[str, Preset] = {
    "protonet-omniglot-1shot": Preset(
        "Snell, Swersky & Zemel 2017, Prototypical Networks, section 3.1",
        "ProtoNet, Omniglot, 60-way 1-shot training episodes, 5 queries per class, Adam 1e-3 halved every 2000",
        dict(
            algorithm="protonet",
            ways=60,
            shots=1,
            queries=5,
            outer_lr=1e-3,
            lr_schedule="step",
            lr_decay_every=2000,
            lr_decay=0.5,
            val_ways=5,
            val_shots=1,
        ),
    ),  # fmt: skip
    "protonet-omniglot-5shot": Preset(
        "Snell, Swersky & Zemel 2017, Prototypical Networks, section 3.1",
        "ProtoNet, Omniglot, 60-way 5-shot training episodes (the package default)",
        dict(
            algorithm="protonet",
            ways=60,
            shots=5,
            queries=5,
            outer_lr=1e-3,
            lr_schedule="step",
            lr_decay_every=2000,
            lr_decay=0.5,
            val_ways=5,
            val_shots=5,
        ),
    ),  # fmt: skip
    "maml-omniglot-5w1s": Preset(
        "Finn, Abbeel & Levine 2017, MAML, section 5.2 and appendix A.1",
        "MAML, Omniglot 5-way 1-shot: inner step 0.4, 1 step (10 at test), 32 tasks per step, Adam 1e-3",
        _MAML_5W,
    ),
    "maml-omniglot-20w1s": Preset(
        "Finn, Abbeel & Levine 2017, MAML, appendix A.1",
        "MAML, Omniglot 20-way 1-shot: inner step 0.1, 5 steps (10 at test), 16 tasks per step",
        _MAML_5W | dict(ways=20, inner_lr=0.1, inner_steps=5, tasks_per_step=16),
    ),
    "fomaml-omniglot-5w1s": Preset(
        "Finn, Abbeel & Levine 2017, MAML, section 5.2 (first-order approximation)",
        "FOMAML, Omniglot 5-way 1-shot, MAML's settings",
        _MAML_5W | dict(algorithm="fomaml"),
    ),
    "adml-omniglot-5w1s": Preset(
        "Yin et al. 2018, Adversarial Meta-Learning, Algorithm 1 (FGSM examples in both loops), with MAML's "
        "Omniglot settings",
        "ADML, Omniglot 5-way 1-shot: FGSM of epsilon 0.2 on pixels in [0, 1], MAML's inner step 0.4, 1 step (10 "
        "at test), 16 tasks per step; test it with fewshot eval RUN --attack pgd --epsilon 0.1",
        _MAML_5W | dict(algorithm="adml", attack="fgsm", epsilon=0.2, tasks_per_step=16),
    ),
    "maml-sinusoid": Preset(
        "Finn, Abbeel & Levine 2017, MAML, section 5.1",
        "MAML, sinusoid regression K=10: MLP 1-40-40-1, inner step 0.01, 1 step, 25 tasks, 70,000 steps",
        _SINE,
    ),
    "reptile-omniglot-5w1s": Preset(
        "Nichol, Achiam & Schulman 2018, Reptile, appendix A (inner loop: plain SGD here, Adam in the paper)",
        "Reptile, Omniglot 5-way 1-shot: 5 inner steps in training, 50 at test; outer SGD step 1 annealed to 0"
        " (cosine here, linear in the paper), 5 tasks per step, 100,000 steps",
        dict(
            algorithm="reptile",
            ways=5,
            shots=1,
            queries=15,
            tasks_per_step=5,
            inner_lr=0.1,
            inner_steps=5,
            test_inner_steps=50,
            optimizer="sgd",
            outer_lr=1.0,
            lr_schedule="cosine",
            steps=100_000,
            val_ways=5,
            val_shots=1,
        ),
    ),  # fmt: skip
    "reptile-sinusoid": Preset(
        "Nichol, Achiam & Schulman 2018, Reptile, section 7.1",
        "Reptile, sinusoid regression K=10: 5 inner SGD steps of 0.02",
        _SINE | dict(algorithm="reptile", inner_lr=0.02, inner_steps=5, route="vmap"),
    ),
    "mamlpp-omniglot-5w1s": Preset(
        "Antoniou, Edwards & Storkey 2019, How to train your MAML, section 5",
        "MAML++, Omniglot 5-way 1-shot: 5 inner steps of 0.1, multi-step loss, per-step BN, learned step sizes,"
        " cosine outer schedule over 150 epochs of 500 steps, first-order for the first 50 (8 tasks per step is"
        " this package's choice)",
        {k: v for k, v in _MAML_5W.items() if k != "test_inner_steps"}  # it tests with its 5 learned steps
        | dict(
            algorithm="mamlpp",
            inner_lr=0.1,
            inner_steps=5,
            tasks_per_step=8,
            lr_schedule="cosine",
            first_order_epochs=50,
            epoch_steps=500,
            steps=75_000,
        ),
    ),  # fmt: skip
    "metalstm-omniglot-5w5s": Preset(
        "Ravi & Larochelle 2017, Optimization as a Model for Few-Shot Learning, section 5, with the authors' "
        "5-shot configuration (twitter/meta-learning-lstm, config/lstm/train-imagenet-5shot.lua), on Omniglot",
        "meta-learner LSTM, 5-way 5-shot: 8 updates per task on the whole support set, one task per step, "
        "Adam 1e-3, 40,000 episodes (the authors' meta-gradient clipping at norm 0.25 is not applied)",
        dict(
            algorithm="metalstm",
            ways=5,
            shots=5,
            queries=15,
            tasks_per_step=1,
            inner_steps=8,
            lstm_hidden=20,
            outer_lr=1e-3,
            lr_schedule="constant",
            steps=40_000,
            val_ways=5,
            val_shots=5,
        ),
    ),
    "matching-omniglot": Preset(
        "Vinyals et al. 2016, Matching Networks, section 4.1.1",
        "Matching Networks, Omniglot: cosine attention, 20-way 1-shot training episodes",
        dict(algorithm="matching", ways=20, shots=1, queries=5, val_ways=5, val_shots=1),
    ),
    "relation-omniglot-5w1s": Preset(
        "Sung et al. 2018, Relation Network, section 4.1 (5-way 1-shot: 19 queries per class)",
        "Relation Networks, Omniglot 5-way 1-shot, MSE to one-hot targets, Adam 1e-3 halved every 100,000",
        dict(
            algorithm="relation", ways=5, shots=1, queries=19, lr_decay_every=100_000, val_ways=5, val_shots=1
        ),
    ),  # fmt: skip
    "siamese-omniglot": Preset(
        "Koch, Zemel & Salakhutdinov 2015, Siamese Networks (weighted L1 head, binary cross-entropy)",
        "Siamese network on conv4, every pair of 20-way 1-shot episodes",
        dict(algorithm="siamese", siamese_loss="bce", ways=20, shots=1, queries=5, val_ways=5, val_shots=1),
    ),
    "transformer-linear": Preset(
        "Garg, Tsipras, Liang & Valiant 2022, What Can Transformers Learn In-Context?, section 3 and appendix A",
        "decoder-only transformer (256 wide, 12 layers, 8 heads) on prompts of linear functions, d = 20, 41 points,"
        " batch 64, Adam 1e-4 for 500,000 steps, curriculum: dimensions 5 -> 20 and points 11 -> 41 every 2000 steps",
        dict(
            algorithm="transformer",
            dataset="linear",
            dim=20,
            shots=40,
            queries=1,
            tasks_per_step=64,
            outer_lr=1e-4,
            lr_schedule="constant",
            steps=500_000,
            curriculum="garg",
            curriculum_every=2000,
            width=256,
            depth=12,
            heads=8,
            max_points=41,
            val_every=2000,
            val_episodes=200,
        ),
    ),  # fmt: skip
    "lsa-linear": Preset(
        "von Oswald et al. 2023, Transformers Learn In-Context by Gradient Descent, section 4 (batch, rate and steps "
        "from the config of their code)",
        "one linear self-attention layer from random weights on linear functions, d = 10, 10 examples, x ~ U(-1, 1)^d,"
        " batch 512, Adam 1e-3 for 10,000 steps; --layers 2 or 3 for 2 or 3 gradient-descent steps",
        dict(
            algorithm="lsa",
            dataset="linear",
            dim=10,
            shots=10,
            queries=1,
            inputs="uniform",
            layers=1,
            tasks_per_step=512,
            outer_lr=1e-3,
            lr_schedule="constant",
            steps=10_000,
            val_every=1000,
            val_episodes=200,
        ),
    ),  # fmt: skip
    "cnp-sinusoid": Preset(
        "Garnelo et al. 2018, Conditional Neural Processes, section 4.1 (regression), on Finn et al.'s sinusoids",
        "conditional neural process (128-unit encoder and decoder, mean aggregation) on sinusoid curves with 10 "
        "context and 10 target points, 25 tasks per step, Adam 1e-3, trained on the Gaussian log-likelihood",
        dict(
            algorithm="cnp",
            dataset="sinusoid",
            shots=10,
            queries=10,
            tasks_per_step=25,
            outer_lr=1e-3,
            steps=5000,
            val_every=500,
        ),
    ),
    "anp-gp": Preset(
        "Kim et al. 2019, Attentive Neural Processes, section 4.1 (1-D Gaussian-process regression)",
        "attentive neural process, deterministic path (self-attention over the context, 8-head cross-attention), "
        "on RBF Gaussian-process curves with 10 context and 10 target points, 25 tasks per step, Adam 1e-3",
        dict(
            algorithm="anp",
            dataset="gp",
            shots=10,
            queries=10,
            tasks_per_step=25,
            outer_lr=1e-3,
            steps=5000,
            val_every=500,
        ),
    ),
    "snail-omniglot-5w1s": Preset(
        "Mishra et al. 2018, A Simple Neural Attentive Meta-Learner, appendix B (Omniglot network)",
        "SNAIL on conv4 embeddings, 5-way 1-shot sequences (support in a random order, each query after it), 16 "
        "tasks per step, Adam 1e-3, bfloat16, 15 minutes (benchmarks/model_based_omniglot.py)",
        dict(
            algorithm="snail",
            ways=5,
            shots=1,
            queries=5,
            tasks_per_step=16,
            outer_lr=1e-3,
            bf16=True,
            steps=1_000_000,
            max_minutes=15,
            val_every=250,
            val_episodes=200,
            val_ways=5,
            val_shots=1,
        ),
    ),
    "icl-omniglot": Preset(
        "Kirsch et al. 2022, General-Purpose In-Context Learning by Meta-Learning Transformers (a transformer "
        "reading labelled examples), in the Omniglot setting of benchmarks/model_based_omniglot.py",
        "in-context transformer (128 wide, 4 blocks, 8 heads) on conv4 embeddings, 1 to 5 shots per task, ways "
        "growing 5 -> 20 by 5 every 250 steps, 8 tasks per step, Adam 1e-3, bfloat16, 15 minutes",
        dict(
            algorithm="icl",
            ways=20,
            shots=5,
            queries=5,
            tasks_per_step=8,
            curriculum="ways=5+5",
            curriculum_every=250,
            outer_lr=1e-3,
            bf16=True,
            steps=1_000_000,
            max_minutes=15,
            val_every=250,
            val_episodes=200,
            val_ways=5,
            val_shots=1,
        ),
    ),
    "mann-omniglot": Preset(
        "Santoro et al. 2016, Meta-Learning with Memory-Augmented Neural Networks, section 4 (Omniglot)",
        "LSTM controller (200) with a 128 x 40 memory and 4 read heads on images resized to 20x20; 5-way episodes of 50 "
        "images (10 of each class, shuffled), 16 episodes per step; Adam 1e-3 where the paper used RMSprop 1e-4 "
        "for 100,000 episodes",
        dict(
            algorithm="mann",
            ways=5,
            shots=5,
            queries=5,
            tasks_per_step=16,
            outer_lr=1e-3,
            steps=100_000,
            val_every=500,
            val_episodes=200,
            val_ways=5,
            val_shots=5,
        ),
    ),
    "baseline-omniglot": Preset(
        "Chen et al. 2019, A Closer Look at Few-shot Classification, section 3.1 (Baseline)",
        "supervised pretraining on every training class, then a new linear head per test task",
        dict(algorithm="baseline", batch_size=64, finetune_steps=100, finetune_lr=1e-2),
    ),
    "baselinepp-omniglot": Preset(
        "Chen et al. 2019, A Closer Look at Few-shot Classification, section 3.2 (Baseline++)",
        "as baseline-omniglot with a cosine classifier",
        dict(algorithm="baselinepp", batch_size=64, finetune_steps=100, finetune_lr=1e-2),
    ),
    "leo-omniglot": Preset(
        "Rusu et al. 2019, Meta-Learning with Latent Embedding Optimization, the defaults of the authors' "
        "config.py (deepmind/leo: 5-way 1-shot, 12 tasks per step, Adam 1e-4), on Omniglot",
        "LEO over a frozen embedding: add --embedding RUN (a trained baseline-omniglot run, 64-d features); 5 "
        "steps on 16-d codes (the paper: 64-d over 640-d features), then 5 on the weights (the authors' gradient "
        "clipping is not applied)",
        dict(
            algorithm="leo",
            ways=5,
            shots=1,
            queries=15,
            tasks_per_step=12,
            outer_lr=1e-4,
            lr_schedule="constant",
            latent_dim=16,
            inner_steps=5,
            finetune_steps=5,
            val_ways=5,
            val_shots=1,
        ),
    ),
    "rl2-bandit": Preset(
        "Duan et al. 2016, RL^2, section 4.1 and Table 1 (5 arms, horizon 100, arm means U[0, 1])",
        "RL², 5-armed Bernoulli bandits of 100 pulls: GRU of 128, A2C on 256 trials a step, Adam 3e-3, gamma 0.9, "
        "GAE lambda 0.95, entropy 0.05 to 0.005 over 4000 steps (benchmarks/bandits.py; the paper: GRU 256, TRPO); "
        "add --max-minutes",
        dict(_RL2, dataset="bandit", arms=5, horizon=100),
    ),
    "rl2-dependent-bandit": Preset(
        "Wang et al. 2016, Learning to reinforcement learn, section 3.1 (dependent arms, p_2 = 1 - p_1, 100 pulls)",
        "RL² on Wang et al.'s two-armed dependent bandit, horizon 100 (the settings of rl2-bandit); "
        "--arm-prior easy / medium / hard for their fixed pairs",
        dict(_RL2, dataset="dependent-bandit", horizon=100),
    ),
    "maml-rl-bandit": Preset(
        "Finn et al. 2017, MAML, section 3.3 (policy-gradient inner steps), on Duan et al. 2016's bandits",
        "MAML-RL, 5-armed bandits of 100 pulls: a REINFORCE step after each block of 20 pulls (4 steps, size 1.0), "
        "exact meta-gradient, MLP policy of 32, 64 trials a step, Adam 1e-3",
        dict(
            algorithm="maml-rl",
            dataset="bandit",
            arms=5,
            horizon=100,
            inner_steps=4,
            inner_lr=1.0,
            hidden=32,
            tasks_per_step=64,
            outer_lr=1e-3,
            lr_schedule="constant",
            val_every=50,
            val_episodes=300,
        ),
    ),
    "protonet-text": Preset(
        "Snell et al. 2017, Prototypical Networks, with TADAM's metric scaling (Oreshkin et al. 2018, section 2.1), "
        "on sentence embeddings (benchmarks/text_hwu64.py)",
        "ProtoNet on frozen sentence embeddings: add --dataset text --data-root FILE; the text default network, a residual MLP "
        "(384 -> 256 -> 384, the identity at the start), distances x 10, 10-way 5-shot episodes, Adam 1e-4",
        dict(
            algorithm="protonet",
            metric_scale=10.0,
            ways=10,
            shots=5,
            queries=5,
            outer_lr=1e-4,
            lr_schedule="constant",
            val_ways=5,
            val_shots=5,
            val_every=250,
        ),
    ),  # fmt: skip
    "maml-text": Preset(
        "Finn, Abbeel & Levine 2017, MAML, on sentence embeddings (benchmarks/text_hwu64.py)",
        "MAML on frozen sentence embeddings: add --dataset text --data-root FILE; a residual MLP with a 5-way "
        "head, 5 inner steps of 1.0 (10 at test), 16 tasks per step, Adam 1e-4",
        dict(
            algorithm="maml",
            ways=5,
            shots=1,
            queries=15,
            inner_lr=1.0,
            inner_steps=5,
            test_inner_steps=10,
            tasks_per_step=16,
            outer_lr=1e-4,
            lr_schedule="constant",
            val_ways=5,
            val_shots=1,
            val_every=250,
        ),
    ),  # fmt: skip
}


def known_settings() -> dict[str, Any]:
    """Every setting name a run can have (the run's own and every registered algorithm's) -> its annotation."""
    from fewshot import registry
    from fewshot.config import TrainConfig

    hints: dict[str, Any] = {}
    for spec in registry.algorithms().values():
        hints = typing.get_type_hints(spec.settings) | hints
    return typing.get_type_hints(TrainConfig) | hints


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}{_suggest(name, list(PRESETS))}; choose one of {sorted(PRESETS)}"
        )
    return PRESETS[name]


def check_settings(settings: dict[str, Any], origin: str) -> dict[str, Any]:
    """Refuses unknown names and values of the wrong type; ints are accepted where floats are expected. Whether
    the chosen algorithm uses a setting is checked when the configuration is built (:meth:`TrainConfig.of`)."""
    from fewshot.config import check_type

    hints = known_settings()
    out = {}
    for key, value in settings.items():
        if key not in hints or key in ("settings", "in_features", "classes"):
            valid = sorted(k for k in hints if k not in ("settings", "in_features", "classes"))
            raise ValueError(f"{origin}: unknown setting {key!r}{_suggest(key, valid)}; valid: {valid}")
        out[key] = check_type(key, value, hints[key], {key: origin})
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON (or TOML) config file, a preset it names applied first, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; give the path of a .json or .toml file")
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors write one) is skipped
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); a config file is {kind} "
            "saved as UTF-8: save it again with that encoding"
        ) from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError as e:
        raise ValueError(f"{path}: TOML needs Python 3.11 or newer; write the config as JSON") from e
    except ValueError as e:
        raise ValueError(f"{path} is not valid {kind}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f'{path}: a config file holds one object of settings, like {{"shots": 5}}')
    settings = dict(preset(data.pop("preset")).settings) if "preset" in data else {}
    return settings | check_settings(data, str(path))


def resolve(
    preset_name: str | None, config_file: str | Path | None, flags: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults < preset < config file < flags: the settings to build a ``TrainConfig`` from, and where each
    came from (for error messages: ``TrainConfig.of(origins=..., **settings)``)."""
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if preset_name is not None:
        settings |= preset(preset_name).settings
        origins |= dict.fromkeys(settings, f"preset {preset_name}")
    if config_file is not None:
        from_file = read_config_file(config_file)
        settings |= from_file
        origins |= dict.fromkeys(from_file, str(config_file))
    settings |= check_settings(flags, "command line")
    origins |= dict.fromkeys(flags, "command line")
    return settings, origins
