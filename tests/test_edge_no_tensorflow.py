"""The device package never needs TensorFlow or Keras: import everything and classify with them blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError("blocked on the device: " + name)
            return None

    sys.meta_path.insert(0, NoTensorFlow())

    import cv2
    import fer_edge
    from fer_edge import app
    from fer_edge.vision.classifier import ExpressionClassifier
    from fer_edge.config import load_config
    from fer_edge.types import Box

    modules = sorted(m.name for m in pkgutil.iter_modules(fer_edge.__path__, "fer_edge."))
    for name in modules:
        importlib.import_module(name)

    model, face, label, clip = sys.argv[1:5]
    classifier = ExpressionClassifier(model)
    assert classifier.runtime == "ai_edge_litert.interpreter", classifier.runtime
    prediction = classifier.classify(cv2.imread(face, cv2.IMREAD_GRAYSCALE), Box(0, 0, 48, 48))
    assert prediction.labels == classifier.labels and len(prediction.scores) == len(classifier.labels)

    cfg = load_config(None, {"source.kind": "file", "source.path": clip, "recording.enabled": False,
                             "events.enabled": False})
    stats = app.run(cfg, max_frames=45)
    assert stats.frames == 45 and stats.faces > 0, stats

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
    assert not leaked, leaked
    print(len(modules), "modules", prediction.label)
    """
)


def test_every_module_imports_and_the_model_runs_without_tensorflow(model_path, public_faces, demo_clip):
    face, label = public_faces(1)[0]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_path), str(face), label, str(demo_clip)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= 10  # config, sources, detector, classifier, annotate, pipeline, app, cli, bench, ...
