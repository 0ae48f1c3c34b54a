"""Policy plugins: a user's kernel design loaded as `MODULE:CLASS` (an importable module) or `FILE.py:CLASS`
(a Python file anywhere). The class must subclass mmugather.policies.base.Kernel, in practice a built-in
policy with some kernel methods overridden (docs/policies.md). Every loading problem is one InputError line.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from mmugather.errors import InputError


def is_plugin_spec(spec: str) -> bool:
    """Does `spec` name a plugin (MODULE:CLASS or FILE.py:CLASS) rather than a built-in policy?"""
    return ":" in spec


def load_policy(spec: str):
    """The Kernel subclass that `spec` names. Its `name` is the spec itself unless the class sets one."""
    from mmugather.policies.base import Kernel
    where, _, clsname = spec.rpartition(":")
    if not where or not clsname:
        raise InputError(f"--policy {spec}: expected MODULE:CLASS or FILE.py:CLASS")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_file(spec, Path(where))
    else:
        module = _import(spec, where)
    cls = getattr(module, clsname, None)
    if cls is None:
        raise InputError(f"--policy {spec}: {where} has no attribute '{clsname}'")
    if not isinstance(cls, type) or not issubclass(cls, Kernel):
        raise InputError(f"--policy {spec}: {clsname} is not a subclass of mmugather.policies.base.Kernel")
    if not cls.arches:
        raise InputError(f"--policy {spec}: {clsname} names no arch (subclass a built-in policy such as "
                         f"mmugather.policies.Linux30, which brings its gather, zap walk and arch)")
    if "name" not in cls.__dict__:
        cls.name = spec
    return cls


def _import(spec: str, modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and modname.startswith(e.name):
            raise InputError(f"--policy {spec}: no module named '{modname}'") from None
        raise InputError(f"--policy {spec}: importing {modname} failed: {_one_line(e)}") from None
    except Exception as e:
        raise InputError(f"--policy {spec}: importing {modname} failed: {_one_line(e)}") from None


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise InputError(f"--policy {spec}: no such file: {path}")
    path = path.resolve()
    modname = f"mmugather_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if modname in sys.modules:
        return sys.modules[modname]
    loader_spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[modname] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[modname]
        raise InputError(f"--policy {spec}: importing {path.name} failed: {_one_line(e)}") from None
    return module


def _one_line(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
