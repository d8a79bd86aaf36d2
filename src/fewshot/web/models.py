"""The networks behind the browser explorers, shipped with the package and loaded once.

    sinusoid_maml.safetensors          1-40-40-1 MLP meta-trained with MAML on sinusoids (Finn et al. 2017, 5.1)
    sinusoid_pretrained.safetensors    the same MLP fitted to all training tasks' points jointly (their figure 2)
    omniglot_protonet.safetensors      conv4 meta-trained as a Prototypical Network on Omniglot's training classes
    incontext_transformer.safetensors  a small decoder-only transformer trained on prompts of noisy 1-D linear
                                       functions (Garg et al. 2022), which it then fits in context
    sinusoid_anp.safetensors           an attentive neural process (Kim et al. 2019, deterministic path) trained
                                       on the sinusoids of the MAML model: a predictive mean and standard
                                       deviation from the context points in one forward pass, drawn beside MAML

``scripts/build_web_models.py`` writes them (seeded, fixed step counts) and records in each file's metadata how
it was trained and what it measured. Nothing here needs the ``web`` extra: the models are plain fewshot.

Device: the networks are loaded on the CPU by default; ``web_models(device="cuda")`` (or ``create_app(device=...)``)
puts them on another device, and the explorers move each request's tensors there and their answers back.

Thread safety: ``torch.func.functional_call`` swaps the given tensors into the module object while it runs, so
two threads calling one module at once could see each other's weights. Every use from the server goes through
:meth:`Loaded.lock`; the modules are in ``eval()`` mode and never trained or modified after loading.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fewshot import devices, io
from fewshot.models import MLP, Conv4
from fewshot.models.attention import PromptTransformer
from fewshot.models.neural_process import NeuralProcess

WEB_DATA = Path(__file__).resolve().parent.parent / "data" / "web"
MAML_FILE = WEB_DATA / "sinusoid_maml.safetensors"
PRETRAINED_FILE = WEB_DATA / "sinusoid_pretrained.safetensors"
OMNIGLOT_FILE = WEB_DATA / "omniglot_protonet.safetensors"
INCONTEXT_FILE = WEB_DATA / "incontext_transformer.safetensors"
ANP_FILE = WEB_DATA / "sinusoid_anp.safetensors"
FORMAT = "fewshot-web/1"
_BUILD_HINT = "rebuild the shipped models with `python scripts/build_web_models.py`"


@dataclass
class Loaded:
    """A network in ``eval()`` mode with what was recorded when it was trained.

    Attributes:
        model: the module; use its parameters read-only, under :attr:`lock`.
        info: the file's metadata (``"training"``: how it was trained, ``"measured"``: its test numbers),
            decoded from JSON where it is JSON.
        lock: held while a request runs the module (see the module docstring).
    """

    model: nn.Module
    info: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return devices.device_of(model=self.model) or torch.device("cpu")


def save_model(path: Path, model: nn.Module, info: dict, dtype: torch.dtype | None = None) -> Path:
    """Writes ``model``'s state (parameters and buffers) with ``info`` as JSON metadata, atomically.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in it, for a smaller file; they are read
    back into the network's own dtype. Round the network the same way before measuring it (``.half().float()``),
    so that what was measured is exactly what ships.
    """
    metadata = {"format": FORMAT} | {k: json.dumps(v) for k, v in info.items()}
    state = {
        k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    return io.save_tensors(path, state, metadata)


def load_model(path: Path, model: nn.Module, device: str | torch.device | None = None) -> Loaded:
    """Loads a file written by :func:`save_model` into ``model`` (put in ``eval()`` mode, gradients off), on
    ``device`` (None: the CPU). The file is read on the CPU and copied into the network there.

    Raises:
        FileNotFoundError / ValueError: the file is missing, damaged or for another network; the message says
            how to rebuild it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall fewshot or {_BUILD_HINT}")
    state, metadata = io.load_tensors_and_metadata(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a fewshot web model (format {metadata.get('format')!r}); {_BUILD_HINT}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit its network ({first}); {_BUILD_HINT}") from e
    if device is not None:
        model = model.to(devices.resolve(device))
    model.eval().requires_grad_(False)
    info = {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    return Loaded(model, info)


def sinusoid_mlp() -> MLP:
    """The 1-40-40-1 ReLU MLP of Finn et al. 2017 (both sinusoid models)."""
    return MLP(1, (40, 40), 1)


def omniglot_conv4() -> Conv4:
    """conv4 with 64 channels, BatchNorm with running statistics (used in ``eval()`` mode)."""
    return Conv4(1, 64)


def incontext_transformer() -> PromptTransformer:
    """The in-context learner of 1-D lines: width 64, 3 blocks of 2 heads, prompts of up to 21 points (20
    examples and the query). Small enough to train in a few minutes on one CPU thread."""
    return PromptTransformer(dim=1, width=64, depth=3, heads=2, max_points=21)


def sinusoid_anp() -> NeuralProcess:
    """The attentive neural process beside MAML: 1-D inputs and targets, width 128, 8 heads (Kim et al. 2019's
    sizes), cross-attention from each target ``x`` to the context."""
    return NeuralProcess(1, 1, width=128, attention=True, heads=8)


@dataclass
class WebModels:
    """The shipped networks."""

    maml: Loaded
    pretrained: Loaded
    protonet: Loaded
    incontext: Loaded
    anp: Loaded


_LOADED: dict[tuple[Path, torch.device], WebModels] = {}
_LOAD_LOCK = threading.Lock()


def web_models(folder: Path = WEB_DATA, device: str | torch.device | None = None) -> WebModels:
    """The shipped networks on ``device`` (None: the CPU), loaded on first use and then shared (read-only) by
    every request."""
    target = torch.device("cpu") if device is None else devices.resolve(device)
    with _LOAD_LOCK:
        if (folder, target) not in _LOADED:
            _LOADED[folder, target] = WebModels(
                maml=load_model(folder / MAML_FILE.name, sinusoid_mlp(), target),
                pretrained=load_model(folder / PRETRAINED_FILE.name, sinusoid_mlp(), target),
                protonet=load_model(folder / OMNIGLOT_FILE.name, omniglot_conv4(), target),
                incontext=load_model(folder / INCONTEXT_FILE.name, incontext_transformer(), target),
                anp=load_model(folder / ANP_FILE.name, sinusoid_anp(), target),
            )
        return _LOADED[folder, target]
