"""An import-only stand-in for ``torchvision``, for benchmark peer environments only.

PyPI's torchvision wheels do not import beside the local CPU build of torch 2.13.0 (``operator
torchvision::nms does not exist``), yet some peer libraries (easyfsl, learn2learn) import it at module level
without using it in the code paths we time. With this package's parent directory on ``sys.path``:

* every ``import torchvision.<anything>`` succeeds (a meta-path finder makes empty stub modules on demand);
* every attribute looked up on a stub module, or on a placeholder, is a placeholder *class*, so
  ``from torchvision.x import Y``, ``from torchvision import transforms; transforms.Compose``, subclassing
  ``Y`` and ``typing.Union[Y, ...]`` all work at import time;
* any real use (instantiating or calling a placeholder, or a subclass of one) raises
  :class:`TorchvisionStubError`.

Nothing here is ever installed into fewshot's own environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+stub"
IS_STUB = True


class TorchvisionStubError(RuntimeError):
    """Raised on any real use of the torchvision stand-in."""


def _refuse(what: str) -> TorchvisionStubError:
    return TorchvisionStubError(
        f"{what}: this is an import-only torchvision stand-in (benchmarks/peers/torchvision_stub); "
        "the real torchvision is not usable beside this torch build"
    )


class _PlaceholderMeta(type):
    """Metaclass of placeholders: an attribute of a placeholder is a nested placeholder (dunders excepted)."""

    def __getattr__(cls, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _placeholder(cls.__module__, f"{cls.__qualname__}.{name}")
        type.__setattr__(cls, name, value)
        return value


def _placeholder(module: str, name: str) -> type:
    def refuse(self, *args, **kwargs):
        raise _refuse(f"{module}.{name}(...)")

    def refuse_new(cls, *args, **kwargs):
        raise _refuse(f"{module}.{name}(...)")

    return _PlaceholderMeta(
        name.rpartition(".")[2],
        (),
        {"__module__": module, "__qualname__": name, "__new__": refuse_new, "__call__": refuse},
    )


def _module_getattr(module_name: str):
    def __getattr__(name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        full = f"{module_name}.{name}"
        if full in sys.modules:  # a submodule imported earlier
            return sys.modules[full]
        value = _placeholder(module_name, name)
        setattr(sys.modules[module_name], name, value)  # the same object on every lookup
        return value

    return __getattr__


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__getattr__ = _module_getattr(module.__name__)
        module.__path__ = []  # a package, so that deeper submodules import too
        module.IS_STUB = True


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
    sys.meta_path.append(_StubFinder())  # last: real files next to this one (none today) would win

__getattr__ = _module_getattr(__name__)
