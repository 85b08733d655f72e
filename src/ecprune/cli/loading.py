"""Load a user's model and data files for ``ecprune prune``, without running code from them.

Tensors and state dicts are read with ``torch.load(weights_only=True)``. A whole pickled module
(``torch.save(model)``) can only be loaded by unpickling arbitrary Python objects, which runs
code stored in the file: that needs an explicit ``trust=True`` (``--trust-model``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

# What torch.load may raise on a file it cannot read with weights_only=True.
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, OSError,
               zipfile.BadZipFile)
# Globals every tensor file names: not worth listing as "Python objects".
_PLAIN_GLOBALS = ("torch._utils.", "collections.", "builtins.", "__builtin__.", "torch.Size",
                  "torch.device")
TRUST_HINT = (
    "Loading it runs code stored in the file, so ecprune refuses unless you pass --trust-model "
    "(do so only for files you trust). Safer: save model.state_dict() and pass MODEL as "
    "package.module:factory with --weights FILE."
)


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a FileNotFoundError naming ``what`` it should have been."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"The {what} file {str(path)!r} {problem}.")
    return path


def pickled_globals(path: Path) -> list[str] | None:
    """Classes and functions named in a ``torch.save`` file's pickle, read without unpickling;
    None if the file is not a readable ``torch.save`` archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            ops = list(pickletools.genops(archive.read(names[0])))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None
    found = []
    for op, arg, _ in ops:
        name = str(arg).replace(" ", ".") if op.name == "GLOBAL" else None
        if name and not name.startswith(_PLAIN_GLOBALS) and not name.endswith("Storage") \
                and name not in found:
            found.append(name)
    return found


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to several paragraphs)."""
    text = " ".join(str(err).split())
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def _unreadable(path: Path, what: str, err: BaseException) -> ValueError:
    reason = ("it is not a zip archive as torch.save writes" if not zipfile.is_zipfile(path)
              else first_sentence(err))
    return ValueError(f"The {what} file {str(path)!r} is not a readable PyTorch file (corrupt, "
                      f"truncated or another format): {reason}.")


def load_tensors(path: Path, what: str, *, objects_hint: str) -> object:
    """``torch.load(path, weights_only=True)`` with one clear message for each way it fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        names = pickled_globals(path)
        if names:
            listed = ", ".join(names[:3])
            raise ValueError(f"The {what} file {str(path)!r} holds pickled Python objects "
                             f"({listed}). {objects_hint}") from None
        raise _unreadable(path, what, err) from None


@contextlib.contextmanager
def search_path(paths: Sequence[str]) -> Iterator[None]:
    """Put ``paths`` (the CLI's ``--path``) first on ``sys.path`` while importing user code."""
    added = [str(Path(p).resolve()) for p in paths]
    for folder in added:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"The --path folder {folder!r} does not exist.")
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


def _import_file(path: Path) -> object:
    """Import a ``.py`` file as the module named after its stem (so its classes pickle)."""
    path = existing_file(path, "factory module").resolve()
    loaded = sys.modules.get(path.stem)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise ValueError(f"A module named {path.stem!r} is already imported from elsewhere; "
                         f"rename {str(path)!r}.")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


def _factory_model(spec: str, paths: Sequence[str]) -> nn.Module:
    module_name, _, attribute = spec.rpartition(":")
    hint = "" if paths else " Pass --path FOLDER if the module is not installed."
    with search_path(paths):
        try:
            module = (_import_file(Path(module_name)) if module_name.endswith(".py")
                      else importlib.import_module(module_name))
        except (FileNotFoundError, ValueError):
            raise
        except Exception as err:  # the user's module may raise anything while importing
            raise ValueError(f"Cannot import {module_name!r} for MODEL {spec!r}: "
                             f"{type(err).__name__}: {err}.{hint}") from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ValueError(f"MODEL {spec!r}: {module_name!r} has no callable {attribute!r}.")
    try:
        model = factory()
    except Exception as err:  # user code
        raise ValueError(f"Calling {spec}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"Calling {spec}() returned a {type(model).__name__}; expected a "
                        "torch.nn.Module.")
    return model


def _load_state_dict(model: nn.Module, weights: str) -> None:
    path = existing_file(weights, "--weights")
    state = load_tensors(path, "--weights", objects_hint="Save model.state_dict() instead.")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise ValueError(f"The --weights file {weights!r} holds a {type(state).__name__}; "
                         "expected a state dict (torch.save(model.state_dict(), FILE)).")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"The --weights file {weights!r} does not fit the model: {detail}") \
            from None


def _pickled_model(path: Path, trust: bool, paths: Sequence[str]) -> nn.Module:
    if not trust:
        model = load_tensors(path, "model", objects_hint=TRUST_HINT)
    else:
        with search_path(paths):
            try:
                model = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as err:  # unpickling runs the file's code: anything can fail
                if not zipfile.is_zipfile(path):
                    raise _unreadable(path, "model", err) from None
                raise ValueError(
                    f"Cannot load the model file {str(path)!r}: {type(err).__name__}: "
                    f"{first_sentence(err)}. If the model's class lives in your own module, pass "
                    "--path FOLDER."
                ) from None
    if isinstance(model, Mapping):
        raise ValueError(f"The model file {str(path)!r} holds a state dict, not a model: pass "
                         "the architecture as MODEL (package.module:factory) and this file as "
                         "--weights.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"The model file {str(path)!r} holds a {type(model).__name__}; expected "
                        "a torch.nn.Module saved with torch.save(model).")
    return model


def is_factory_spec(spec: str) -> bool:
    """``package.module:factory`` or ``file.py:factory`` (not an existing file)."""
    module, _, attribute = spec.rpartition(":")
    return bool(module) and attribute.replace(".", "").isidentifier() and not Path(spec).exists()


def load_model(spec: str, *, weights: str | None = None, trust: bool = False,
               paths: Sequence[str] = ()) -> nn.Module:
    """The model named by ``spec``: a ``torch.save(model)`` file, or ``module:factory`` (called
    without arguments, then given ``weights`` when set)."""
    if is_factory_spec(spec):
        model = _factory_model(spec, paths)
        if weights is not None:
            _load_state_dict(model, weights)
        return model
    if weights is not None:
        raise ValueError("--weights goes with MODEL given as package.module:factory; MODEL "
                         f"{spec!r} is a file.")
    return _pickled_model(existing_file(spec, "model"), trust, paths)
