"""The camera-like conditions of ``make bench``'s robustness table, on real faces."""

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


def test_benchmarks_of_named_models_leave_the_shipped_models_record_alone(tmp_path, monkeypatch, capsys):
    import bench.models
    from bench.models import publish

    monkeypatch.setattr(bench.models, "REPO", tmp_path)
    (tmp_path / "bench").mkdir()
    (tmp_path / "DOC.md").write_text("a\n<!-- b -->\nold\n<!-- e -->\n")
    publish("robustness", "candidate table\n", {"x": 1}, ("<!-- b -->", "<!-- e -->"), ("DOC.md",), record=False)
    assert "candidate table" in capsys.readouterr().out
    assert not list((tmp_path / "bench").iterdir()) and "old" in (tmp_path / "DOC.md").read_text()
    publish("robustness", "shipped table\n", {"x": 1}, ("<!-- b -->", "<!-- e -->"), ("DOC.md",))
    assert (tmp_path / "bench" / "results-robustness.md").read_text() == "shipped table\n"
    assert "shipped table" in (tmp_path / "DOC.md").read_text()
