"""The index and retention thread on a real tmpfs that fills up and empties again, in a child process run inside
a private user namespace (see test_retention.py). Prints what it saw as JSON."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

from fer_edge.record import retention
from fer_edge.record.index import RecordingIndex

SLICE_S = 0.01
STATE: dict = {}


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def wait_for(what: str, condition) -> None:  # noqa: ANN001 - a test helper
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}: {STATE}")
        time.sleep(SLICE_S)


def main() -> None:
    mount, source, young, late = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    out = mount / "out"
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("fer_edge").addHandler(handler)
    logging.getLogger("fer_edge").setLevel(logging.INFO)

    opened, synced = [0], [0]
    hold = threading.Event()
    held = threading.Event()

    class CountingIndex(RecordingIndex):
        def __init__(self, directory: Path) -> None:
            opened[0] += 1
            super().__init__(directory)

        def sync(self, keep_going=lambda: True) -> None:  # noqa: ANN001
            while hold.is_set():
                held.set()
                time.sleep(SLICE_S)
            synced[0] += 1
            super().sync(keep_going)

    STATE.update(opened=opened, synced=synced, records=records, out=out)
    retention.RecordingIndex = CountingIndex  # type: ignore[misc]
    fill(mount)  # full before the run starts: the index cannot be opened
    keeper = retention.Housekeeper(out, 7.0, sync_interval_s=SLICE_S).start()
    wait_for("the index, opened once retention made room", lambda: opened[0] >= 2 and synced[0] >= 2)
    seen = {"full_at_start": list(records)}
    (mount / "filler").unlink()

    hold.set()
    wait_for("a sync held", held.is_set)
    for suffix in (".mp4", ".jsonl"):
        shutil.copy(source / f"{young}{suffix}", out / f"{late}{suffix}")
    fill(mount)  # the new recording's thumbnail and rows cannot be written now
    start, before = synced[0], len(records)
    hold.clear()
    wait_for("ten syncs on a full disk", lambda: synced[0] >= start + 10)
    seen["full_while_running"] = records[before:]
    (mount / "filler").unlink()
    wait_for("the new recording indexed", lambda: (out / ".thumbs" / f"{late}.jpg").is_file())
    keeper.close()
    print(json.dumps({**seen, "files": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main()
