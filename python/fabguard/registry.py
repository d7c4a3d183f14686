"""Plug-ins found by name: one registry per kind (``detector``, ``routing_rule``).

A plug-in is one module holding its class, plus one line here (``BUILTIN``) or, for a third-party
package, one entry point in the group ``fabguard.<kind>s`` (``[project.entry-points."fabguard.detectors"]
my-detector = "my_package.module:MyDetector"``). Names are known without importing anything, so the CLI
can list them as choices while ``--help`` stays fast; a class is imported when it is first asked for.
The CLI choices, model loading and evaluation all look plug-ins up here.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from fabguard.errors import InputError

BUILTIN: dict[str, dict[str, str]] = {
    "detector": {
        "pca": "fabguard.anomaly.pca:PCADetector",
        "vae": "fabguard.anomaly.vae:VAEDetector",
        "patchcore": "fabguard.anomaly.patchcore:PatchCoreDetector",
        "feature-vae": "fabguard.anomaly.feature_vae:FeatureVAEDetector",
    },
    "routing_rule": {
        "random": "fabguard.active.routing:RandomRule",
        "margin": "fabguard.active.routing:MarginRule",
        "spread": "fabguard.active.routing:SpreadRule",
        "value_change": "fabguard.active.routing:ValueChangeRule",
        "value_brier": "fabguard.active.routing:ValueBrierRule",
        "value_cost": "fabguard.active.routing:ValueCostRule",
    },
}

_ADDED: dict[str, dict[str, str]] = {kind: {} for kind in BUILTIN}


def register(kind: str, name: str, target: str) -> None:
    """Add a plug-in at run time: ``target`` is ``"module:Class"``. A name already taken is refused."""
    if kind not in BUILTIN:
        raise InputError(f"unknown plug-in kind {kind!r}; kinds: {', '.join(sorted(BUILTIN))}")
    if name in _targets(kind) and _targets(kind)[name] != target:
        raise InputError(f"{kind.replace('_', ' ')} {name!r} is already registered as {_targets(kind)[name]}")
    _ADDED[kind][name] = target


def _targets(kind: str) -> dict[str, str]:
    found = {entry.name: entry.value for entry in entry_points(group=f"fabguard.{kind}s")}
    return {**found, **_ADDED[kind], **BUILTIN[kind]}


def available(kind: str) -> list[str]:
    """The names of every plug-in of ``kind``, in registration order (nothing is imported)."""
    targets = _targets(kind)
    return [*BUILTIN[kind], *(n for n in targets if n not in BUILTIN[kind])]


def get(kind: str, name: str) -> type:
    """The class registered as ``name``; an unknown name raises :class:`InputError` listing the known ones."""
    targets = _targets(kind)
    if name not in targets:
        raise InputError(f"unknown {kind.replace('_', ' ')} {name!r}; available: {', '.join(available(kind))}")
    module, _, attr = targets[name].partition(":")
    return getattr(importlib.import_module(module), attr)
