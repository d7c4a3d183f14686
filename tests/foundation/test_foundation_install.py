"""The light core install: what ``pip install fabguard`` (no extras) pulls, and what the yield engine imports."""

import re
import subprocess
import sys
from importlib.metadata import requires

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "scikit-learn", "matplotlib", "tensorrt")


def test_core_requirements_hold_no_heavy_package():
    core = [r for r in requires("fabguard") if "extra ==" not in r]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in core}
    assert names == {"numpy", "pandas", "pyarrow", "scipy", "tqdm"}
    extras = [r for r in requires("fabguard") if "extra ==" in r]
    assert any(r.startswith("torch") and 'extra == "vision"' in r for r in extras)


def test_the_yield_engine_and_its_cli_import_no_heavy_package():
    code = ("import sys, fabguard.machine_yield, fabguard.cli; fabguard.cli.build_parser(['yield']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime', 'sklearn', "
            "'matplotlib', 'tensorrt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
