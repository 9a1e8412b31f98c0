"""The model zoo: a name or a file path → a :class:`~coscale.accel.base.ModelFamily`.

:func:`get_family` resolves, in this order:

1. a built-in name (:data:`BUILTIN`: ``digits-cnn``, ``minilm``), matched exactly;
2. a path whose name ends in one of :data:`ONNX_SUFFIXES` (``.onnx``) →
   :class:`~coscale.accel.files.OnnxFileFamily`, or :data:`TORCHSCRIPT_SUFFIXES`
   (``.pt``, ``.ts``, ``.torchscript``) → :class:`~coscale.accel.files.TorchScriptFamily`
   (suffixes compared case-insensitively; ``~`` expanded; the file must exist —
   a missing or invalid file is a :class:`~coscale.errors.ModelFileError`);
3. anything else → :class:`~coscale.errors.UnknownModelError` listing the built-in
   names, the closest one (``difflib.get_close_matches``, cutoff
   :data:`SUGGEST_CUTOFF` 0.6) when there is one, and how to pass a file.

Families are imported lazily (importing this module imports neither torch nor
onnxruntime) and a fresh family is returned on every call; families themselves load
nothing heavy until a variant is built.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from coscale.errors import UnknownModelError

if TYPE_CHECKING:
    from coscale.accel.base import ModelFamily

#: Built-in families: name → ``"module:ClassName"``, constructed with no arguments.
BUILTIN: dict[str, str] = {
    "digits-cnn": "coscale.accel.digits:DigitsFamily",
    "minilm": "coscale.accel.minilm:MiniLMFamily",
}
ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
TORCHSCRIPT_SUFFIXES: tuple[str, ...] = (".pt", ".ts", ".torchscript")
SUGGEST_CUTOFF = 0.6


def builtin_names() -> list[str]:
    """The built-in model names, sorted."""
    return sorted(BUILTIN)


def _load(target: str) -> ModelFamily:
    module_name, _, class_name = target.partition(":")
    family_class = getattr(importlib.import_module(module_name), class_name)
    family: ModelFamily = family_class()
    return family


def get_family(name_or_path: str) -> ModelFamily:
    """A built-in family by name, or a family for a user's model file (module docstring)."""
    key = name_or_path.strip()
    if key in BUILTIN:
        return _load(BUILTIN[key])
    suffix = Path(key).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from coscale.accel.files import OnnxFileFamily

        return OnnxFileFamily(key)
    if suffix in TORCHSCRIPT_SUFFIXES:
        from coscale.accel.files import TorchScriptFamily

        return TorchScriptFamily(key)
    raise unknown_model(key)


def unknown_model(name: str) -> UnknownModelError:
    """The error for a name that is neither built in nor a model file path."""
    names = builtin_names()
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=SUGGEST_CUTOFF)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    files = "/".join(ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES)
    return UnknownModelError(
        f"unknown model {name!r}; the built-in models are {', '.join(names)}.{hint}",
        fix=f"Use a built-in name, or pass the path of your own model file ending in {files} "
        "(ONNX, or TorchScript with a <file>.json sidecar describing its inputs), "
        "e.g. ./models/net.onnx.",
    )
