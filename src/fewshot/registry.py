"""Names to algorithms: the built-in ones, those registered from Python, and those of installed packages.

Each algorithm module declares an :class:`~fewshot.algorithms.base.AlgorithmSpec`; this module only maps names to
them. A new built-in algorithm is its file plus one ``register`` line below. Another package adds its own without
editing fewshot, either by calling :func:`register` or through the ``fewshot.algorithms`` entry-point group
(the entry point names an ``AlgorithmSpec``, or a list of them), as pytest plugins do::

    [project.entry-points."fewshot.algorithms"]
    centroid = "my_package.centroid:SPEC"
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from fewshot import baselines
from fewshot.algorithms import (
    adml,
    cavia,
    icl,
    leo,
    lsa,
    maml,
    maml_rl,
    mamlpp,
    mann,
    matching,
    metalstm,
    metasgd,
    neural_process,
    protonet,
    relation,
    reptile,
    rl2,
    siamese,
    snail,
    transformer,
)
from fewshot.algorithms.base import Algorithm, AlgorithmSpec

GROUP = "fewshot.algorithms"
_ALGORITHMS: dict[str, AlgorithmSpec] = {}
_entry_points_loaded = False


def register(spec: AlgorithmSpec, replace: bool = False) -> AlgorithmSpec:
    """Makes ``spec`` available by its name to ``TrainConfig``, the CLI and every reader of run directories.

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to take it over).
    """
    if not isinstance(spec, AlgorithmSpec):
        raise ValueError(f"register takes an AlgorithmSpec, got {type(spec).__name__}")
    if spec.name in _ALGORITHMS and not replace and _ALGORITHMS[spec.name] is not spec:
        raise ValueError(f"an algorithm named {spec.name!r} is registered already; choose another name")
    _ALGORITHMS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Removes algorithm ``name`` (one registered from Python, when it is no longer wanted)."""
    _ALGORITHMS.pop(name, None)


# the built-in algorithms, one line each
register(protonet.SPEC)
register(matching.SPEC)
register(relation.SPEC)
register(siamese.SPEC)
register(maml.SPEC)
register(maml.FOMAML_SPEC)
register(maml.ANIL_SPEC)
register(metasgd.SPEC)
register(metalstm.SPEC)
register(reptile.SPEC)
register(cavia.SPEC)
register(mamlpp.SPEC)
register(adml.SPEC)
register(lsa.SPEC)
register(leo.SPEC)
register(transformer.SPEC)
register(neural_process.CNP_SPEC)
register(neural_process.ANP_SPEC)
register(snail.SPEC)
register(icl.SPEC)
register(mann.SPEC)
register(rl2.SPEC)
register(maml_rl.SPEC)
register(baselines.BASELINE_SPEC)
register(baselines.BASELINEPP_SPEC)
register(baselines.SCRATCH_SPEC)


def load_entry_points() -> None:
    """Registers the algorithms that installed packages declare in the ``fewshot.algorithms`` group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=GROUP):
        try:
            found = point.load()
        except Exception as e:  # a broken plugin is named, not hidden
            raise ValueError(
                f"the {GROUP} entry point {point.name!r} ({point.value}) failed to load: {e}; fix or uninstall "
                "the package that declares it"
            ) from e
        for spec in found if isinstance(found, (list, tuple)) else [found]:
            register(spec)


def algorithms() -> dict[str, AlgorithmSpec]:
    """Every registered algorithm by name, installed packages' included."""
    load_entry_points()
    return dict(_ALGORITHMS)


def get(name: str) -> AlgorithmSpec:
    """The spec of algorithm ``name``; an unknown name raises a ValueError listing the choices."""
    if name not in _ALGORITHMS:
        load_entry_points()
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(_ALGORITHMS)}")
    return _ALGORITHMS[name]


# test-time replacements for a run's own algorithm (``fewshot compare RUN:nn``): any trained embedding works
TEST_ALGORITHMS: dict[str, Callable[[], Algorithm]] = {
    "nn": lambda: baselines.NearestNeighbour("embedding"),
    "nn-cosine": lambda: baselines.NearestNeighbour("embedding", "cosine"),
    "class-mean": baselines.NearestMean,
    "finetune": lambda: baselines.FineTune("linear"),
    "finetune-cosine": lambda: baselines.FineTune("cosine"),
    "finetune-all": lambda: baselines.FineTune("linear", all_layers=True),
}
