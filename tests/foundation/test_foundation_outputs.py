"""fabguard.outputs: outputs checked before work starts; files and folders appear whole or not at all."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fabguard.errors import InputError
from fabguard.outputs import atomic_dir, atomic_path, check_output


def test_file_gets_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "model") as folder:
            (folder / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert list(tmp_path.iterdir()) == sorted(tmp_path.iterdir()) and {p.name for p in tmp_path.iterdir()} == {
        "report.json", "model"}


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_failed_folder_keeps_the_old_folder_whole(tmp_path):
    model = tmp_path / "model"
    with atomic_dir(model) as folder:
        (folder / "manifest.json").write_text("v1")
        (folder / "graph.onnx").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(model) as folder:
            (folder / "graph.onnx").write_text("v2")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in model.iterdir()} == {"manifest.json": "v1", "graph.onnx": "v1"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(model) as folder:
        (folder / "manifest.json").write_text("v2")
    assert {p.name: p.read_text() for p in model.iterdir()} == {"manifest.json": "v2"}  # replaced, not merged


def test_sigint_while_writing_a_folder_leaves_the_old_one(tmp_path):
    """A real Ctrl-C, delivered by the kernel while the new folder is half written."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "part").write_text("old")
    script = textwrap.dedent(f"""
        import sys, time
        from fabguard.outputs import atomic_dir
        with atomic_dir({str(model)!r}) as folder:
            (folder / "part").write_text("new")
            print("writing", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert (model / "part").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_check_output_refusals(tmp_path):
    data = tmp_path / "small.csv"
    data.write_text("x\n1\n")
    with pytest.raises(InputError, match="is the input file"):
        check_output(tmp_path / "." / "small.csv", "--csv", inputs=[data])
    with pytest.raises(InputError, match="is a folder; expected a file"):
        check_output(tmp_path, "--json")
    with pytest.raises(InputError, match="is a file; expected a folder"):
        check_output(data, "--out", folder=True)
    with pytest.raises(InputError, match="empty path"):
        check_output("", "--out")
    assert check_output(tmp_path / "new" / "deeper" / "r.json", "--json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_read_only_folder_is_refused(read_only_dir):
    with pytest.raises(InputError, match="no permission to write"):
        check_output(read_only_dir / "report.json", "--json")
    with pytest.raises(InputError, match="no permission to write"):
        check_output(read_only_dir / "new" / "model", "--out", folder=True)


def test_devices_pipes_and_model_folders_are_never_overwritten(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a pipe; expected a file path"):
        check_output(fifo, "--json")
    with pytest.raises(InputError, match="is a pipe"):
        with atomic_path(fifo) as tmp:
            tmp.write_text("x")
    assert fifo.is_fifo()
    with pytest.raises(InputError, match="is a device; expected a file path"):
        check_output("/dev/null", "--csv")
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="lies inside the input folder"):
        check_output(model / "manifest.json", "--out", inputs=[model])
    with pytest.raises(InputError, match="is the input folder"):
        check_output(model, "--out", inputs=[model], folder=True)
    assert (model / "manifest.json").read_text() == "{}"


def test_writing_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and link.read_text() == "new" and target.read_text() == "new"
