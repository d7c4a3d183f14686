"""``fabguard anomaly score``: folders and archives, Parquet parts, resuming, errors, and the Ray engine."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fabguard.anomaly.batch_score import PART, list_items, score_archive
from fabguard.anomaly.runtime import Inspector
from fabguard.cli import main
from fabguard.errors import InputError


@pytest.fixture(scope="module")
def artifacts(normals, tmp_path_factory) -> dict:
    """Two small PCA models of the same data (the shared fixture fits every detector: slower)."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector

    folder = tmp_path_factory.mktemp("score_onnx")
    return {name: export_onnx(PCADetector(n_components=k, input_size=64).fit(normals.images), folder / f"{name}.onnx")
            for name, k in (("pca", 8), ("pca4", 4))}


@pytest.fixture(scope="module")
def expected(artifacts, test_set):
    """What the Inspector says for each test image (the reference every engine must reproduce)."""
    result = Inspector(artifacts["pca"]).inspect([Path(p) for p in test_set.paths])
    return {Path(p).name + "/" + Path(p).parent.name: (s, d, h) for p, s, d, h in
            zip(test_set.paths, result.scores, result.decisions, result.heatmaps)}


def _key(path: str) -> str:
    path = path.split("!")[-1]
    return Path(path).name + "/" + Path(path).parent.name


def _check(frame: pd.DataFrame, expected: dict, stats: bool = False) -> None:
    assert sorted(map(_key, frame["path"])) == sorted(expected) and frame["path"].is_unique
    for _, row in frame.iterrows():
        score, decision, heatmap = expected[_key(row["path"])]
        # the same float32 inputs through the same session; batch composition may change the summation
        # order of the graph, so the scores agree to the float32 round-off of a mean of S*S terms
        assert row["score"] == pytest.approx(score, rel=64 * 64 * 2.0**-23) and row["decision"] == decision
        assert pd.isna(row["error"])
        if stats:
            assert row["heatmap_max"] == pytest.approx(heatmap.max(), rel=64 * 64 * 2.0**-23)


def test_folder_tree_in_chunks_matches_the_inspector(artifacts, synthetic_root, expected, tmp_path, capsys):
    out = tmp_path / "scores"
    assert main(["anomaly", "score", "--artifact", str(artifacts["pca"]), str(synthetic_root / "test"), "--out",
                 str(out), "--chunk", "5", "--workers", "2", "--heatmap-stats", "--quiet"]) == 0
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == [f"part-{i:06d}.parquet" for i in range(4)]  # 16 images in chunks of 5
    _check(pd.read_parquet(out), expected, stats=True)
    assert "16 images: 0 already" in capsys.readouterr().out


def test_archives_zip_and_tar(artifacts, test_set, expected, tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for p in test_set.paths[:9]:
            z.write(p, f"{Path(p).parent.name}/{Path(p).name}")
        z.writestr("notes.txt", "ignored")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as t:
        for p in test_set.paths[9:]:
            t.add(p, f"{Path(p).parent.name}/{Path(p).name}")
    counts = score_archive(artifacts["pca"], [tmp_path / "a.zip", tmp_path / "b.tar.gz"], tmp_path / "out", chunk=4)
    assert counts == {"images": 16, "skipped": 0, "scored": 16, "errors": 0, "parts": 4}
    frame = pd.read_parquet(tmp_path / "out")
    assert frame["path"].iloc[0].startswith(f"{tmp_path / 'a.zip'}!")
    _check(frame, expected)


def test_an_interrupted_job_resumes_where_it_stopped(artifacts, synthetic_root, expected, tmp_path, monkeypatch):
    import fabguard.anomaly.batch_score as batch_score

    real, written = batch_score.PartWriter.write, []

    def write_then_die(self, columns):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third part is being written
        written.append(real(self, columns))

    monkeypatch.setattr(batch_score.PartWriter, "write", write_then_die)
    out = tmp_path / "scores"
    with pytest.raises(KeyboardInterrupt):
        score_archive(artifacts["pca"], [synthetic_root / "test"], out, chunk=3)
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]  # whole parts only
    (out / ".part-000002.parquet.0123456789ab.tmp.parquet").write_bytes(b"half")  # as left by a killed job
    monkeypatch.setattr(batch_score.PartWriter, "write", real)
    counts = score_archive(artifacts["pca"], [synthetic_root / "test"], out, chunk=3)
    assert counts["skipped"] == 6 and counts["scored"] == 10 and counts["parts"] == 4
    _check(pd.read_parquet(out), expected)
    assert not any(p.name.startswith(".") for p in out.iterdir())
    assert score_archive(artifacts["pca"], [synthetic_root / "test"], out)["scored"] == 0  # nothing left


def test_undecodable_images_are_rows_with_the_reason(artifacts, test_set, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(Path(test_set.paths[0]).read_bytes())
    (folder / "b.png").write_bytes(b"broken")
    score_archive(artifacts["pca"], [folder], tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out").set_index("path")
    bad = frame.loc[str(folder / "b.png")]
    assert bad["decision"] == "ERROR" and np.isnan(bad["score"]) and "cannot decode image" in bad["error"]
    assert pd.isna(frame.loc[str(folder / "a.png"), "error"])


def test_bad_inputs_are_refused_before_work(artifacts, synthetic_root, tmp_path):
    with pytest.raises(InputError, match="no such image file, folder or archive"):
        list_items([tmp_path / "missing"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an image .* nor an archive"):
        list_items([tmp_path / "notes.txt"])
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read the archive"):
        list_items([tmp_path / "bad.zip"])
    with pytest.raises(InputError, match="given twice"):
        list_items([synthetic_root / "test", synthetic_root / "test" / "good"])
    out = tmp_path / "scores"
    score_archive(artifacts["pca"], [synthetic_root / "test" / "good"], out)
    with pytest.raises(InputError, match="holds scores of another model"):
        score_archive(artifacts["pca4"], [synthetic_root / "test"], out)  # same data, other model
    with pytest.raises(InputError, match="written without --heatmap-stats"):
        score_archive(artifacts["pca"], [synthetic_root / "test"], out, heatmap_stats=True)
    (out / "other.csv").write_text("x")
    with pytest.raises(InputError, match="not a scores part"):
        score_archive(artifacts["pca"], [synthetic_root / "test"], out)
    with pytest.raises(InputError, match="tar archive is read as one stream"):
        with tarfile.open(tmp_path / "c.tar", "w") as t:
            t.add(next((synthetic_root / "test" / "good").iterdir()), "x.png")
        score_archive(artifacts["pca"], [tmp_path / "c.tar"], tmp_path / "o2", engine="ray")
    assert not (tmp_path / "o2").exists()


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_engine_matches_the_local_one(local_ray, artifacts, synthetic_root, test_set, expected, tmp_path):
    """Ray Data actors (2, one session each) on a local Ray instance: same rows as the local engine,
    archives included, and a rerun skips what is done."""
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for p in test_set.paths[:6]:
            z.write(p, f"{Path(p).parent.name}/{Path(p).name}")
    (tmp_path / "more").mkdir()
    for p in test_set.paths[6:]:
        (tmp_path / "more" / Path(p).parent.name).mkdir(exist_ok=True)
        (tmp_path / "more" / Path(p).parent.name / Path(p).name).write_bytes(Path(p).read_bytes())
    inputs = [tmp_path / "a.zip", tmp_path / "more"]
    counts = score_archive(artifacts["pca"], inputs, tmp_path / "ray", engine="ray", chunk=8, workers=2,
                           heatmap_stats=True)
    assert counts["scored"] == 16 and counts["errors"] == 0
    assert all(PART.fullmatch(p.name) for p in (tmp_path / "ray").iterdir())
    _check(pd.read_parquet(tmp_path / "ray"), expected, stats=True)
    assert score_archive(artifacts["pca"], inputs, tmp_path / "ray", engine="ray", heatmap_stats=True)["skipped"] == 16
