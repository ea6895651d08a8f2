"""A run's log: one JSON record per log line in RUN/metrics.jsonl, mirrored as TensorBoard events in
RUN/tensorboard/ when `train.tensorboard` asks for them.

metrics.jsonl is the record of truth: a resumed run drops the lines written after its checkpoint, and
the event files are rewritten from it when the writer opens, so they never hold a step twice and a run
resumed with TensorBoard newly on shows its whole history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdlkit.errors import ConfigError
from sdlkit.io import write_text, write_text_atomically

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
"""The picture of the run's curves (sdlkit.train.curves) written when it ends."""
TENSORBOARD_DIR = "tensorboard"
EVENTS_PREFIX = "events.out.tfevents."
"""The name every TensorBoard event file starts with (the only files sdlkit writes into TENSORBOARD_DIR)."""
X_AXIS = "samples"
"""The record field every value is plotted against: training samples seen."""


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl in order, up to its first unreadable line (a kill or a full disk
    mid-line leaves a torn tail); [] when there is no file."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            break
        records.append(record)
    return records


def require_tensorboard() -> None:
    """ConfigError (one line naming the extra) unless the tensorboard package can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.tensorboard needs the tensorboard package: pip install 'sdlkit[tensorboard]' "
            "(or set train.tensorboard: false)"
        ) from None


class RunLog:
    """Appends log records to `run_dir`/metrics.jsonl and, with `tensorboard`, to its event files."""

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.tensorboard = tensorboard
        self._writer: Any = None  # torch.utils.tensorboard.SummaryWriter, opened at the first record

    def truncate(self, step: int) -> None:
        """Keep the records of steps up to `step` (a resumed run writes the later ones again); drop a torn tail."""
        if self.path.is_file():
            kept = [r for r in read_records(self.path) if r["step"] <= step]
            write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        write_text(self.path, json.dumps(record) + "\n", mode="a")
        if not self.tensorboard:
            return
        if self._writer is None:
            self._writer = self._open_writer()  # replays metrics.jsonl, this record included
        else:
            self._add(record)
        self._writer.flush()  # a killed run keeps every line it logged

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_writer(self) -> Any:
        """A SummaryWriter on a fresh event file holding every record of metrics.jsonl (older event files,
        which may hold steps the resumed run drops, are removed)."""
        from torch.utils.tensorboard import SummaryWriter

        folder = self.run_dir / TENSORBOARD_DIR
        if folder.is_dir():
            for old in folder.glob(f"{EVENTS_PREFIX}*"):
                old.unlink()
        self._writer = SummaryWriter(str(folder))
        for record in read_records(self.path):
            self._add(record)
        return self._writer

    def _add(self, record: dict[str, Any]) -> None:
        """Every number of `record` but the step counters, against its samples."""
        for key, value in record.items():
            if key not in ("step", X_AXIS) and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=record[X_AXIS])


def watch_files(run_dir: Path) -> dict[str, Path]:
    """What a run folder holds to watch its training by, of {"curves": curves.png, "tensorboard": its
    event folder}, where present."""
    found = {"curves": Path(run_dir) / CURVES_FILE, "tensorboard": Path(run_dir) / TENSORBOARD_DIR}
    return {name: path for name, path in found.items() if path.exists()}
