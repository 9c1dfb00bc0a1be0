"""Wires the live view (``web``) and MQTT (``mqtt``) into a built pipeline; with both off it changes nothing.

Both read one :class:`~fer_edge.serve.live.LiveFeed` sink, added last so it gets the annotated frame. The privacy stage
and the recording sink are wrapped so the ``privacy`` and ``recording`` switches (MQTT ``.../set``) apply while
the loop runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

from fer_edge.config import Config, resolve_model_path
from fer_edge.config.checks import parse_listen
from fer_edge.errors import FerEdgeError
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.switches import SwitchedPrivacy, SwitchedRecorder, Switches
from fer_edge.vision.privacy import anonymize

log = logging.getLogger(__name__)

PRIVACY_WHEN_SWITCHED_ON = "blur"  # privacy.mode off, and Home Assistant switches privacy on


def build_integrations(cfg: Config, pipeline, *, classifier=None, recorder=None, make_recorder=None) -> LiveFeed | None:
    """Add the live feed (and its web server and MQTT publisher) to ``pipeline``; None when both are off.

    ``recorder``: the recording sink already in ``pipeline.sinks`` (None: not recording), replaced by one that
    follows the recording switch; ``make_recorder()`` builds a fresh one when recording is switched on again.
    """
    if not (cfg.web.enabled or cfg.mqtt.enabled):
        return None
    from fer_edge.config.preflight import serve_secrets

    token, password = dataclasses.astuple(serve_secrets(cfg))  # the same checks as check-config

    switches = Switches(recording=recorder is not None, privacy=cfg.privacy.mode != "off")
    mode = cfg.privacy.mode if cfg.privacy.mode != "off" else PRIVACY_WHEN_SWITCHED_ON
    pipeline.privacy = SwitchedPrivacy(pipeline.privacy or functools.partial(anonymize, mode=mode), switches)
    if recorder is not None:
        recorder_sink = SwitchedRecorder(recorder, make_recorder, switches)
        pipeline.sinks = [recorder_sink if sink is recorder else sink for sink in pipeline.sinks]
    else:
        recorder_sink = None

        def warn_nothing_to_record(name: str, on: bool) -> None:
            if name == "recording" and on:
                log.warning("recording switched on, but recording and events are off in the config: nothing to record")

        switches.listen(warn_nothing_to_record)

    feed = LiveFeed(
        info=_info(cfg, pipeline, classifier),
        switches=switches,
        recorder=recorder_sink,
        recordings_dir=Path(cfg.recording.output_dir) if cfg.recording.enabled else None,
    )
    feed.watch(pipeline)
    pipeline.sinks.append(feed)
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
                    token=token,
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
                switches,
                cfg.mqtt,
                password=password,
                labels=list(getattr(classifier, "labels", ())),
                model=feed.info.get("model"),
                configuration_url=live_view_url(cfg.web.listen) if cfg.web.enabled else None,
            )
            feed.extra_stats["mqtt"] = publisher.stats
            feed.consumers.append(publisher.start())
            if pipeline.notifier is not None:
                pipeline.notifier = BrokerStatus(pipeline.notifier, publisher)
    except BaseException:
        feed.close()
        raise
    return feed


class BrokerStatus:
    """The service notifier, whose status line (``systemctl status``) also says when the broker is unreachable."""

    def __init__(self, notifier, publisher):
        self._notifier = notifier
        self._publisher = publisher

    def status(self, text: str) -> None:
        if not self._publisher.connected:
            text += f"; mqtt {self._publisher.cfg.host}:{self._publisher.cfg.port} unreachable, retrying"
        self._notifier.status(text)

    def __getattr__(self, name):
        return getattr(self._notifier, name)


def _info(cfg: Config, pipeline, classifier) -> dict:
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
        "detector": type(pipeline.detector).__name__,
    }
