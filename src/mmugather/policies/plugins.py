"""Policy plugins: a user's kernel design loaded as `MODULE:CLASS` (an importable module) or `FILE.py:CLASS`
(a Python file anywhere). The class must subclass mmugather.policies.base.Kernel, in practice a built-in
policy with some kernel methods overridden (docs/policies.md). Every loading problem is one InputError line.

At run time a plugin is held to the kernel-path contract: each of its methods that overrides a kernel path
(a generator in the built-in policy) must return a generator, and every generator method of the plugin may
yield only an int >= 0 (simulated ns), a request the engine knows, or another path's generator, and may not
nest more than MAX_DEPTH calls of itself. A breach is a PluginError naming the plugin, the method with its
file and line, and the rule; any other exception raised while a plugin runs becomes a PluginError naming
the plugin's own frames (`plugin_guard`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import GeneratorType

from mmugather.errors import InputError

MAX_DEPTH = 500
_CONTRACT = "a kernel path yields an int (ns >= 0), a request or another path's generator (docs/policies.md)"


class PluginError(InputError):
    """A policy plugin broke the kernel-path contract or raised while it ran: its own fault, not the model's."""


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
    if "_plugin_spec" not in cls.__dict__:
        cls._plugin_spec = spec
        _hold_to_contract(cls, spec)
    return cls


def _ours(k: type) -> bool:
    return k.__module__ == "mmugather" or k.__module__.startswith("mmugather.")


def _hold_to_contract(cls: type, spec: str) -> None:
    """Wrap every method the plugin's own classes define that overrides a kernel path or is a generator."""
    builtin = next(k for k in cls.__mro__ if _ours(k))
    for k in cls.__mro__:
        if _ours(k):
            break
        for name, fn in list(vars(k).items()):
            if not inspect.isfunction(fn) or getattr(fn, "_mmugather_checked", False):
                continue
            if inspect.isgeneratorfunction(getattr(builtin, name, None)) or inspect.isgeneratorfunction(fn):
                setattr(k, name, _checked(spec, fn))


def _where(fn) -> str:
    code = fn.__code__
    return f"{Path(code.co_filename).name}:{code.co_firstlineno}"


def _checked(spec: str, fn):
    depth = [0]

    @functools.wraps(fn)
    def method(self, *args, **kw):
        gen = fn(self, *args, **kw)
        if type(gen) is not GeneratorType:
            raise PluginError(f"--policy {spec}: {fn.__qualname__} ({_where(fn)}) returned "
                              f"{type(gen).__name__}, not a generator: it overrides a kernel path, and {_CONTRACT}")
        return _watch(spec, fn, gen, getattr(self.engine, "handlers", None), depth)
    method._mmugather_checked = True  # type: ignore[attr-defined]  # a mark on the wrapper, read above
    return method


def _watch(spec: str, fn, gen, handlers, depth: list[int]):
    """Run plugin generator `gen` for the engine, checking each value it yields."""
    depth[0] += 1
    try:
        if depth[0] > MAX_DEPTH:
            raise PluginError(f"--policy {spec}: {fn.__qualname__} ({_where(fn)}) nested more than {MAX_DEPTH} "
                              f"calls of itself: unbounded recursion")
        val = None
        while True:
            try:
                v = gen.send(val)
            except StopIteration as e:
                return e.value
            if v.__class__ is int:
                if v < 0:
                    raise PluginError(f"--policy {spec}: {fn.__qualname__} ({_where(fn)}) yielded {v}: "
                                      f"negative time; {_CONTRACT}")
            elif v.__class__ is not GeneratorType and handlers is not None and v.__class__ not in handlers:
                raise PluginError(f"--policy {spec}: {fn.__qualname__} ({_where(fn)}) yielded "
                                  f"{_short(v)} (a {type(v).__name__}); {_CONTRACT}")
            val = yield v
    finally:
        depth[0] -= 1


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@contextmanager
def plugin_guard(cls):
    """Around a run of policy `cls`: if it is a plugin, an exception raised while it ran becomes a
    PluginError naming the plugin, the exception and the plugin's own frames."""
    spec = cls.__dict__.get("_plugin_spec") or getattr(cls, "_plugin_spec", None)
    try:
        yield
    except InputError:
        raise
    except (Exception, SystemExit) as e:
        if spec is None:
            raise
        raise PluginError(plugin_failure(cls, spec, e)) from None


def _plugin_files(cls) -> set[str]:
    """The source files of the plugin's own classes: their modules' and their methods' (a class made at
    run time has no module file)."""
    files: set[str] = set()
    for k in cls.__mro__:
        if _ours(k) or k is object:
            continue
        module_file = getattr(sys.modules.get(k.__module__), "__file__", None)
        if module_file:
            files.add(module_file)
        for fn in vars(k).values():
            fn = inspect.unwrap(fn) if inspect.isfunction(fn) else None
            if fn is not None:
                files.add(fn.__code__.co_filename)
    return files


def plugin_failure(cls, spec: str, e: BaseException) -> str:
    """One line: the exception and where it was raised, the plugin's frames first (repeats folded)."""
    files = _plugin_files(cls)
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if f.filename in files]
    if not own:
        last = frames[-1] if frames else None
        at = f" (raised inside mmugather at {Path(last.filename).name}:{last.lineno})" if last else ""
        return f"--policy {spec}: {_one_line(e)} while the plugin ran{at}"
    folded: list[list] = []
    for f in own:
        label = f"{Path(f.filename).name}:{f.lineno} in {f.name}"
        if folded and folded[-1][0] == label:
            folded[-1][1] += 1
        else:
            folded.append([label, 1])
    shown = [lab + (f" (x{n})" if n > 1 else "") for lab, n in folded[-6:]]
    return f"--policy {spec}: {_one_line(e)} at {' <- '.join(reversed(shown))}"


def _import(spec: str, modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and modname.startswith(e.name):
            raise InputError(f"--policy {spec}: no module named '{modname}'") from None
        raise InputError(f"--policy {spec}: importing {modname} failed: {_one_line(e)}") from None
    except (Exception, SystemExit) as e:
        raise InputError(f"--policy {spec}: importing {modname} failed: {_one_line(e)}") from None


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise InputError(f"--policy {spec}: no such file: {path}")
    path = path.resolve()
    modname = f"mmugather_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if modname in sys.modules:
        return sys.modules[modname]
    loader_spec = importlib.util.spec_from_file_location(modname, path)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(f"--policy {spec}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[modname] = module
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[modname]
        raise InputError(f"--policy {spec}: importing {path.name} failed: {_one_line(e)}") from None
    return module


def _one_line(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r}): the plugin called sys.exit()"
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
