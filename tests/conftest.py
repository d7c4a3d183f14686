"""Project-wide test settings and fixtures."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def read_only_dir():
    """A folder nobody may write into, this process included: a read-only tmpfs mount when running as
    root (root writes through permission bits, as CI does), a mode-0555 folder otherwise."""
    folder = Path(tempfile.mkdtemp(prefix="fabguard-ro-"))
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        folder.rmdir()
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.fail(f"cannot make a read-only folder as root (mount: {mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()
