"""fabguard.registry: plug-ins by name, known without importing them."""

import subprocess
import sys

import pytest

from fabguard import registry
from fabguard.errors import InputError


def test_names_are_listed_without_importing_any_plugin():
    code = ("import sys; from fabguard import registry; "
            "print(registry.available('detector'), registry.available('routing_rule')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, heavy = out.splitlines()
    assert "'pca'" in names and "'patchcore'" in names and "'margin'" in names
    assert heavy == "[]"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(InputError, match=r"unknown detector 'nope'; available: pca, vae, patchcore"):
        registry.get("detector", "nope")
    with pytest.raises(InputError, match="unknown plug-in kind 'widget'"):
        registry.register("widget", "x", "a:B")


def test_a_name_cannot_be_taken_twice(monkeypatch):
    monkeypatch.setitem(registry._ADDED, "detector", {})
    with pytest.raises(InputError, match="'pca' is already registered as fabguard.anomaly.pca:PCADetector"):
        registry.register("detector", "pca", "elsewhere:Other")
    registry.register("detector", "json-dummy", "json:JSONDecoder")
    registry.register("detector", "json-dummy", "json:JSONDecoder")  # the same target again is harmless
    assert registry.available("detector")[-1] == "json-dummy"
    import json

    assert registry.get("detector", "json-dummy") is json.JSONDecoder


def test_every_builtin_plugin_resolves_to_a_class():
    for kind in registry.BUILTIN:
        for name in registry.available(kind):
            assert isinstance(registry.get(kind, name), type), (kind, name)
