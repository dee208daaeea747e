"""How much of a command's console output is known library noise, and a recorder for it.

``clipsr demo --check`` records its own console (:class:`Transcript`: the stdout and stderr file
descriptors, so the lines Ray forwards from its workers and C++ logs count too) and fails unless
the lines matching :data:`NOISE` stay below :data:`BUDGET` of its bytes. The patterns are what
the demo printed before clipsr was quiet by default: MLflow's download bars and INFO lines, Ray
Train's reports and worker-group lines, open_clip's INFO, Ray Data's progress logs, Ray's core
logs, and every copy of the random-CLIP warning after the first of each kind.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass

BUDGET = 0.10  # share of the console bytes
NOISE = {
    "mlflow download bar": r"Downloading artifacts",
    "mlflow INFO": r"INFO mlflow\.|Successfully registered model|Created version '",
    "ray train report": (
        r"TrainingReport\(|Reporting training result|Checkpoint successfully created"
    ),
    "ray train workers": (
        r"Requesting resources|training worker group|world_rank=\d|Setting up process group"
        r"|Moving model to device|Wrapping provided model|PlacementGroupCleaner"
    ),
    "open_clip INFO": (
        r"Parsing (model|tokenizer) identifier|Loaded built-in|Instantiating model architecture"
        r"|Final image preprocessing|creation process complete|Using default SimpleTokenizer"
        r"|No potential checkpoint path|No pretrained weights loaded|Attempting to load config"
    ),
    "ray data progress": (
        r"logging_progress\.py|streaming_executor\.py|Running Dataset|Progress bars disabled"
        r"|Progress will be logged|Total Progress:|Active & requested resources"
    ),
    "ray core": (
        r"core_worker\.cc|logging\.cc|mutex\.cc|INFO worker\.py|Started a local Ray instance"
    ),
    "python traceback": r"Traceback \(most recent call last\)|^\s+File \"",
}
_NOISE = {name: re.compile(pattern) for name, pattern in NOISE.items()}
_RANDOM_CLIP = re.compile(r"RANDOMLY INITIALISED")


@dataclass
class NoiseReport:
    total_bytes: int
    noise_bytes: int
    by_kind: dict[str, int]  # noise bytes per NOISE kind (and "repeated random-CLIP warning")

    @property
    def share(self) -> float:
        return self.noise_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        top = sorted(self.by_kind.items(), key=lambda kv: -kv[1])[:3]
        kinds = ", ".join(f"{k} {v} B" for k, v in top) or "none"
        return (
            f"{self.share:.1%} of {self.total_bytes} console bytes are known library noise "
            f"(budget {BUDGET:.0%}; largest: {kinds})"
        )


def measure(text: str) -> NoiseReport:
    """Classify ``text`` (a console transcript) line by line; a progress bar's carriage-return
    updates count as the line they are on."""
    total = len(text.encode("utf-8", "replace"))
    by_kind: dict[str, int] = {}
    seen_random: set[str] = set()
    for line in text.splitlines(keepends=True):
        size = len(line.encode("utf-8", "replace"))
        kind = next((name for name, rx in _NOISE.items() if rx.search(line)), None)
        if kind is None and _RANDOM_CLIP.search(line):
            key = re.sub(r"^.*?(CLIP )", r"\1", line.strip())  # without a worker prefix
            if key in seen_random:
                kind = "repeated random-CLIP warning"
            seen_random.add(key)
        if kind is not None:
            by_kind[kind] = by_kind.get(kind, 0) + size
    return NoiseReport(total, sum(by_kind.values()), by_kind)


class Transcript:
    """Tee this process's stdout and stderr file descriptors into a buffer (``text()``), while
    they still reach the console. Child processes (Ray's) inherit the tee."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._saved: dict[int, int] = {}
        self._recording = False

    def __enter__(self) -> Transcript:
        sys.stdout.flush()
        sys.stderr.flush()
        self._recording = True
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            threading.Thread(target=self._pump, args=(read, self._saved[fd]), daemon=True).start()
        return self

    def _pump(self, read: int, out: int) -> None:
        while chunk := os.read(read, 65536):
            os.write(out, chunk)
            with self._lock:
                if self._recording:
                    self._chunks.append(chunk)

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        with self._lock:
            self._recording = False
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # the pump keeps forwarding what Ray's processes still write

    def text(self, settle_s: float = 0.2) -> str:
        """What was recorded, once the pipes have been quiet for ``settle_s`` (the pumps may
        still be copying what was just written)."""
        sys.stdout.flush()
        sys.stderr.flush()
        size, deadline = -1, time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with self._lock:
                now = sum(len(c) for c in self._chunks)
            if now == size:
                break
            size = now
            time.sleep(settle_s)
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")
