"""User code in experiments: modules to import before a run, and classes named by a dotted path.

A run's ``imports: [pkg.module, ...]`` are imported before anything is built, so layers (or
tasks) they register with ``@seqicl.layers.register`` can be used by name. A layer spec with
``_target_: pkg.module.Class`` names the class itself.
"""

from __future__ import annotations

import importlib
import re

from seqicl.errors import ConfigError

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_module_names(names, key: str = "imports") -> list[str]:
    """``names`` as a list of dotted module names, or a ConfigError naming ``key``."""
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{key} must be a list of module names, e.g. {key}=[mypkg.layers]; got {names!r}")
    for name in names:
        if not isinstance(name, str) or not _DOTTED.match(name):
            raise ConfigError(f"{key}: {name!r} is not a module name (dotted Python identifiers, e.g. mypkg.layers)")
    return list(names)


def import_modules(names, key: str = "imports") -> None:
    """Import each module of ``names``; a module that fails to import is a ConfigError."""
    for name in check_module_names(names, key):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any error while importing user code is reported in one line
            raise ConfigError(f"{key}: cannot import {name!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


def import_object(path: str, key: str = "_target_"):
    """The object at ``pkg.module.Name`` (the longest importable module prefix, then attributes)."""
    if not isinstance(path, str) or not _DOTTED.match(path) or "." not in path:
        raise ConfigError(f"{key} must be a dotted path pkg.module.Name, got {path!r}")
    parts = path.split(".")
    error = None
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise ConfigError(f"{key}: importing {name!r} failed: {e}") from None
            error = e
            continue
        except Exception as e:  # noqa: BLE001 - any error in the user's module is reported in one line
            raise ConfigError(f"{key}: importing {name!r} failed: {type(e).__name__}: {e}".splitlines()[0]) from None
        obj = module
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ConfigError(f"{key}: {name!r} has no attribute {'.'.join(parts[i:])!r} (for {path!r})")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(f"{key}: cannot import {path!r}: {error}")


def dotted_path(obj) -> str:
    """``module.QualName`` of a module-level class or function (the inverse of ``import_object``)."""
    path = f"{obj.__module__}.{obj.__qualname__}"
    if "<locals>" in path:
        raise ConfigError(f"{path} is defined inside a function; define it at module level so that "
                          "it can be named by its import path")
    return path
