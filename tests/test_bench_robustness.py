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
