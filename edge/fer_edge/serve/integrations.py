"""The live view (``web``) and MQTT (``mqtt``): the live feed sink, its web server and MQTT publisher, built from
the parts :func:`fer_edge.app.build_device` made; with both off there is nothing to build.

Both read one :class:`~fer_edge.serve.live.LiveFeed` sink, which the app adds last so it gets the annotated frame.
The ``privacy`` and ``recording`` switches (MQTT ``.../set``) are built by the app before the stages that follow them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fer_edge.config import Config, resolve_model_path
from fer_edge.config.checks import parse_listen
from fer_edge.errors import FerEdgeError
from fer_edge.pipeline import Classifier, Notifier, RunStats
from fer_edge.serve.live import LiveFeed, RecorderState
from fer_edge.serve.switches import Switches

if TYPE_CHECKING:
    from fer_edge.serve.mqtt import MqttPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Integrations:
    """The live feed (a sink, None when web and MQTT are off) and the notifier the loop reports to."""

    feed: LiveFeed | None
    notifier: Notifier


def build_integrations(
    cfg: Config,
    switches: Switches | None,
    notifier: Notifier,
    *,
    run_stats: Callable[[], RunStats | None],
    classifier: Classifier,
    detector_name: str,
    recorder: RecorderState | None,
) -> Integrations:
    """The live feed with its web server and MQTT publisher started, as ``cfg`` asks; ``notifier`` unchanged and no
    feed when both are off. ``run_stats()`` gives the loop's live counters; ``recorder``: the recording sink."""
    if not (cfg.web.enabled or cfg.mqtt.enabled):
        return Integrations(None, notifier)
    from fer_edge.config.preflight import serve_secrets

    secrets = serve_secrets(cfg)  # the same checks as check-config
    feed = LiveFeed(
        info=_info(cfg, classifier, detector_name),
        switches=switches,
        recorder=recorder,
        recordings_dir=Path(cfg.recording.output_dir) if cfg.recording.enabled else None,
        run_stats=run_stats,
    )
    try:
        if cfg.web.enabled:
            from fer_edge.serve.web import WebServer

            host, port = parse_listen(cfg.web.listen)
            w = cfg.web
            feed.consumers.append(
                WebServer(
                    feed,
                    host=host,
                    port=port,
                    token=secrets.token,
                    stream_fps=w.stream_fps,
                    stream_width=w.stream_width,
                    jpeg_quality=w.jpeg_quality,
                    max_connections=w.max_connections,
                    max_viewers=w.max_viewers,
                ).start()
            )
        if cfg.mqtt.enabled:
            from fer_edge.serve.homeassistant import live_view_url
            from fer_edge.serve.mqtt import MqttPublisher

            publisher = MqttPublisher(
                feed,
                switches if switches is not None else Switches(),
                cfg.mqtt,
                password=secrets.password,
                labels=feed.info["labels"],
                model=feed.info.get("model"),
                configuration_url=live_view_url(cfg.web.listen) if cfg.web.enabled else None,
            )
            feed.extra_stats["mqtt"] = publisher.stats
            feed.consumers.append(publisher.start())
            notifier = BrokerStatus(notifier, publisher)
    except BaseException:
        feed.close()
        raise
    return Integrations(feed, notifier)


class BrokerStatus:
    """The service notifier, whose status line (``systemctl status``) also says when the broker is not connected,
    and why, or refused a subscription (a switch's commands then never arrive)."""

    def __init__(self, notifier: Notifier, publisher: MqttPublisher):
        self._notifier = notifier
        self._publisher = publisher

    def ready(self) -> object:
        return self._notifier.ready()

    def watchdog(self) -> object:
        return self._notifier.watchdog()

    def stopping(self) -> object:
        return self._notifier.stopping()

    def status(self, text: str) -> object:
        broker = f"{self._publisher.cfg.host}:{self._publisher.cfg.port}"
        if not self._publisher.connected:
            why = self._publisher.outage or "unreachable"
            text += f"; mqtt {broker}: {why}, retrying"
        elif self._publisher.refused:
            refused = self._publisher.refused
            text += f"; mqtt {broker}: subscription refused: " + ", ".join(f"{t} ({why})" for t, why in refused.items())
        return self._notifier.status(text)

    def close(self) -> None:
        self._notifier.close()


def _info(cfg: Config, classifier: Classifier, detector_name: str) -> dict:
    try:
        model = resolve_model_path(cfg.model.path).name
    except FerEdgeError:
        model = None
    sidecar = getattr(classifier, "sidecar", None)
    return {
        "model": model,
        "model_variant": getattr(sidecar, "variant", None),
        "labels": list(getattr(classifier, "labels", ())),
        "runtime": getattr(classifier, "runtime", None),
        "detector": detector_name,
    }
