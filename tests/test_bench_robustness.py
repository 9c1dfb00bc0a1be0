"""``make bench``: the camera-like conditions of its robustness table, on real faces; what the models table
scores and where its numbers go."""

import json
import shutil

import numpy as np

from bench.robustness import CONDITIONS
from train import data


def test_each_condition_keeps_the_faces_shape_and_changes_them(fer2013_dir, cache_dir):
    faces = data.load_split(fer2013_dir, "public", cache_dir).x[:20]
    for name, condition in CONDITIONS.items():
        out = condition(faces)
        assert out.dtype == np.uint8 and out.shape == faces.shape, name
        changed = np.mean([not np.array_equal(o, f) for o, f in zip(out, faces)])
        assert changed == (0.0 if name == "clean" else 1.0), name
    np.testing.assert_array_equal(CONDITIONS["mirrored"](faces), faces[:, :, ::-1])
    darker = CONDITIONS["dim (gamma 2)"](faces)
    assert darker.mean() < 0.8 * faces.mean()


def test_benchmarks_write_their_results_files_and_never_the_docs(tmp_path, monkeypatch, capsys):
    """Named models leave the shipped models' record alone; no benchmark rewrites a tracked doc."""
    import bench.models
    from bench.models import publish

    monkeypatch.setattr(bench.models, "REPO", tmp_path)
    (tmp_path / "bench").mkdir()
    doc = tmp_path / "DOC.md"
    doc.write_text("a\n<!-- bench:robustness:begin -->\nold\n<!-- bench:robustness:end -->\n")
    publish("robustness", "candidate table\n", {"x": 1}, record=False)
    assert "candidate table" in capsys.readouterr().out
    assert not list((tmp_path / "bench").iterdir())
    publish("robustness", "shipped table\n", {"x": 1})
    assert (tmp_path / "bench" / "results-robustness.md").read_text() == "shipped table\n"
    assert "old" in doc.read_text() and "shipped table" not in doc.read_text()


def test_the_models_table_scores_public_test_only(fer2013_dir, cache_dir, tmp_path, monkeypatch, capsys):
    """PrivateTest is scored once per shipped model, by its conversion: the bench reads that number from the
    sidecar and shows none for a model that has none (a candidate, the origin's CNN)."""
    import bench.models

    real_load_split = data.load_split

    def load_public_only(root, split, _cache):
        assert split != "private", "make bench loaded PrivateTest"
        return real_load_split(root, split, cache_dir)

    monkeypatch.setattr(data, "load_split", load_public_only)
    monkeypatch.setattr(bench.models, "on_one_core", lambda: None)
    monkeypatch.setattr(bench.models, "latency_ms", lambda path: 1.0)
    shipped = bench.models.REPO / "models" / "fer_fast_int8.tflite"
    candidate = tmp_path / "candidate.tflite"
    shutil.copyfile(shipped, candidate)
    sidecar = json.loads(shipped.with_suffix(".json").read_text())
    private, private_f1 = sidecar["metrics"].pop("private_accuracy"), sidecar["metrics"].pop("private_macro_f1")
    candidate.with_suffix(".json").write_text(json.dumps(sidecar))

    assert bench.models.main([str(shipped), str(candidate), "--data", str(fer2013_dir)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| fast ")]
    assert len(rows) == 2
    public = f"{100 * sidecar['metrics']['public_accuracy']:.2f}%"
    assert rows[0].split(" | ")[2:5] == [public, f"{100 * private:.2f}%", f"{private_f1:.3f}"]
    assert rows[1].split(" | ")[2:5] == [public, "-", "-"]
    assert f"| {shipped.stat().st_size / 1000:.0f} kB |" in rows[0]
    # beside each calibrated model's ECE, what a perfect calibration would read by chance on as many faces
    calibration_rows = [line for line in out.splitlines() if line.startswith("| `") and "->" in line]
    assert len(calibration_rows) == 2
    for row in calibration_rows:
        chance = [cell.split(" / ") for cell in row.strip(" |").split(" | ")[-2:]]
        for mean, p90 in chance:
            assert 0.5 < float(mean.rstrip("%")) < float(p90.rstrip("%")) < 4.0, row
    assert calibration_rows[0].split(" | ")[-2:] == calibration_rows[1].split(" | ")[-2:]  # one seed, same model
