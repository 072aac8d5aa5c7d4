"""Whole-Z timing for ``--quantize``: several Zs timed as users run them, interleaved, over several rounds.

Each round times every model once in its own block (``runs`` runs, median), the order rotating from round to
round, each session with idle threads not spinning (ASSETS.md: sessions that spin slow each other ~1.8x).
A ratio is taken per round (model / the first model, from the same round) and reported as the median with
its spread (lowest and highest round): on a loaded machine one round's ratio says little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from ..contract import IMAGE
from ..runtime.session import make_session


@dataclass(frozen=True)
class Ratio:
    """A time ratio over interleaved rounds: median, lowest and highest round, and how it was measured."""

    median: float
    low: float
    high: float
    rounds: int
    runs: int

    def text(self) -> str:
        """``0.42 (0.40-0.47 over 5 interleaved rounds)``."""
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f} over {self.rounds} interleaved rounds)"

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "rounds": self.rounds, "runs": self.runs}


def median_seconds(session, images: np.ndarray, runs: int) -> float:
    """Median seconds of one call of ``session`` on ``images`` over ``runs`` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {IMAGE: images})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def runs_for(model: onnx.ModelProto, images: np.ndarray, budget: float = 0.5) -> int:
    """Runs per timing block: about ``budget`` seconds of work, 3 to 50 runs."""
    session = make_session(model)
    start = time.perf_counter()
    session.run(None, {IMAGE: images})
    return int(np.clip(budget / max(time.perf_counter() - start, 1e-6), 3, 50))


def time_ratios(models: list[onnx.ModelProto], images: np.ndarray, rounds: int = 5, runs: int = 3) -> list[Ratio]:
    """Each model's time over the first model's (which gets 1.0), on ``images``, interleaved over ``rounds``."""
    sessions = [make_session(m) for m in models]
    for s in sessions:
        median_seconds(s, images, 1)  # warm-up: first runs allocate
    times = np.empty((rounds, len(sessions)))
    for r in range(rounds):
        order = np.roll(np.arange(len(sessions)), -r)
        for i in order:
            times[r, i] = median_seconds(sessions[i], images, runs)
    ratios = times / times[:, :1]
    return [
        Ratio(float(np.median(ratios[:, i])), float(ratios[:, i].min()), float(ratios[:, i].max()), rounds, runs)
        for i in range(len(models))
    ]


def reset_peak_memory() -> None:
    """Start measuring the peak resident memory afresh (Linux: ``clear_refs`` resets ``VmHWM``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: ``peak_memory_mb`` is then the process's peak since it started
        pass


def peak_memory_mb() -> float:
    """Peak resident memory since ``reset_peak_memory`` (or since the process started), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
