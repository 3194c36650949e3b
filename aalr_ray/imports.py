"""The one loader of ``package.module:attribute`` import paths.

Grid files, ``aalr-ray train`` and the method options name user code this way:
models (``factories:slow_mlp``), datasets (``my_data:Loader.make``) and
optimizers (``torch.optim:Adam``). Every place resolves them here, so a path
that one command accepts is accepted by all. Importing the path runs the
module's code in the calling process: a grid file is code, not data.
"""
from __future__ import annotations

import importlib
import re

from .errors import describe

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_ATTRIBUTE = _MODULE  # a dotted attribute is allowed: Class.factory


class ImportPathError(ValueError):
    """An import path that is malformed, does not import, or names nothing; its text is one line."""


def is_import_path(text: object) -> bool:
    """Whether ``text`` has the form ``package.module:attribute`` (nothing is imported)."""
    if not isinstance(text, str):
        return False
    module, sep, attribute = text.partition(":")
    return bool(sep) and bool(_MODULE.fullmatch(module)) and bool(_ATTRIBUTE.fullmatch(attribute))


def load_object(path: str, what: str = "object") -> object:
    """The object that ``path`` (``package.module:attribute[.attribute]``) names.

    ``what`` names the kind of object in the error ("model factory", "dataset").
    Raises ImportPathError with one line that quotes the path and the cause.

    >>> load_object("os.path:join").__name__
    'join'
    """
    if not is_import_path(path):
        raise ImportPathError(f"{what} {path!r}: expected an import path 'package.module:attribute'")
    module_name, _, attribute = path.partition(":")
    try:  # the module's own code runs here: anything may go wrong in it
        obj = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise ImportPathError(f"{what} {path!r} does not import: {describe(exc)}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportPathError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 (a module's __getattr__ may raise anything)
            raise ImportPathError(f"{what} {path!r}: attribute {attribute!r} of module {module_name!r} fails: "
                                  f"{describe(exc)}") from None
    return obj


def load_callable(path: str, what: str = "function") -> object:
    """Like load_object, and the object must be callable."""
    obj = load_object(path, what)
    if not callable(obj):
        raise ImportPathError(f"{what} {path!r} is not callable (it is a {type(obj).__name__})")
    return obj
