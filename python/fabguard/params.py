"""One way to check a parameter, for every estimator, function and command of fabguard.

Estimators declare ``_parameter_constraints`` (parameter name -> list of accepted forms, as
scikit-learn does) and call ``self._validate_params()`` at the start of ``fit``; free functions and
the CLI call :func:`check`. A refused value raises :class:`~fabguard.errors.InvalidParameterError`
naming the parameter, its owner, the accepted forms and the value given.

:class:`Estimator` gives scikit-learn's ``get_params`` / ``set_params`` contract (so
``sklearn.clone`` works) without importing scikit-learn, which the light core install (the yield
engine) does not have. Classes that need scikit-learn's mixins subclass ``sklearn.base.BaseEstimator``
and :class:`ValidatedParams` instead.

Sizes that could exhaust memory are checked with :func:`check_memory` before allocating.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from fabguard.errors import InvalidParameterError, ResourceError

MAX_SEED = 2**32 - 1  # numpy, torch and the C++ core all take a seed in [0, 2^32)


@dataclass(frozen=True)
class Interval:
    """A number in a range: ``kind`` is ``int`` or ``float``; ``closed`` is "both", "left", "right" or
    "neither". ``int`` accepts integral numbers only (``True`` / ``False`` are refused); ``float`` accepts
    any finite real number (and an integer)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not right)):
            return False
        return True

    def __str__(self) -> str:
        name = "an integer" if self.kind is int else "a finite number"
        if self.low is None and self.high is None:
            return name
        lo = "-inf" if self.low is None else _number(self.low)
        hi = "inf" if self.high is None else _number(self.high)
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        return f"{name} in {left}{lo}, {hi}{right}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings)."""

    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Instance:
    """An instance of a type (or of any of a tuple of types)."""

    types: type | tuple

    def accepts(self, value) -> bool:
        return isinstance(value, self.types)

    def __str__(self) -> str:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return "an instance of " + " or ".join(t.__name__ for t in types)


class _NoneValue:
    def accepts(self, value) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


NONE = _NoneValue()
SEED = Interval(int, 0, MAX_SEED)
FRACTION_OPEN = Interval(float, 0, 1, "neither")
POSITIVE_INT = Interval(int, 1, None)


def check(name: str, value, *forms, owner: str = ""):
    """Return ``value`` if any of ``forms`` accepts it; else raise :class:`InvalidParameterError`."""
    if any(form.accepts(value) for form in forms):
        return value
    where = f" of {owner}" if owner else ""
    allowed = " or ".join(str(f) for f in forms)
    raise InvalidParameterError(f"the {name!r} parameter{where} must be {allowed}; got {value!r}")


def check_seed(seed, owner: str = "") -> int:
    """A seed that numpy, torch and the C++ core all accept: an integer in [0, 2^32 - 1]."""
    return int(check("seed", seed, SEED, owner=owner))


class ValidatedParams:
    """``_validate_params()`` against the class's ``_parameter_constraints``; for any estimator."""

    _parameter_constraints: dict = {}

    def _validate_params(self) -> None:
        owner = type(self).__name__
        for name, forms in self._parameter_constraints.items():
            check(name, getattr(self, name), *forms, owner=owner)


class Estimator(ValidatedParams):
    """scikit-learn's parameter contract without scikit-learn: ``__init__`` stores each argument under
    its own name and does nothing else; ``get_params(deep)`` / ``set_params`` read and write them, so
    ``sklearn.clone`` and grid searches work; validation happens in ``fit``."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict:
        params = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            params[name] = value
        return params

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise InvalidParameterError(f"{type(self).__name__} has no parameter {name!r} "
                                            f"(parameters: {', '.join(valid)})")
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"


def available_memory() -> int:
    """Bytes of memory this process may still use: the smaller of the machine's available memory
    (``MemAvailable``) and a cgroup limit, when either is known; otherwise a large number."""
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    if not limits and hasattr(os, "sysconf"):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(limits) if limits else 1 << 62


def check_memory(n_bytes: float, what: str, hint: str = "") -> None:
    """Refuse, before allocating, work whose estimated memory ``n_bytes`` exceeds what is available."""
    available = available_memory()
    if n_bytes > available:
        raise ResourceError(f"{what} needs about {_size(n_bytes)} of memory, more than the {_size(available)} "
                            f"available{'; ' + hint if hint else ''}")


def _size(n: float) -> str:
    """Bytes in decimal units, 3 significant digits."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
