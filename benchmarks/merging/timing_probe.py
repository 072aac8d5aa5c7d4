"""The time of the concatenated and the merged Z of Lite0 sources, without the benchmark's long fits.

    python -m benchmarks.merging.timing_probe DIR fashionA,fashionB[,digits] [PREFIX]

(PREFIX: ``lite0`` by default; ``lite0full`` times the end-to-end fine-tunings, which share no layer.)

Mode "teachers" on a 20-image pool per task, merge by plain averaging: the Zs have the same backbones as
``run.py``'s (one merged Lite0 vs one per source); the heads are small either way. Prints the build's own
timing (median of 5 calls at batch 32) and ``run.times`` (15 calls, the two Zs interleaved).
"""

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.merging.run import IMAGE, LITE0, TASKS, subset, times
from onnxmerge.merger import Merger
from onnxmerge.stages.merging import MergeSpec
from onnxmerge.stages.sources import Source

w = Path(sys.argv[1])
tasks = sys.argv[2].split(",")
prefix = sys.argv[3] if len(sys.argv) > 3 else "lite0"
pool = subset(np.load(w / "pool.npz"), tasks, 20)
test = subset(np.load(w / "test.npz"), tasks, 32)
src = [Source(t, w / f"{prefix}_{t}.onnx", LITE0, labels=TASKS[t]) for t in tasks]
c = Merger(IMAGE, src, mode="teachers", quiet=True).fit(unlabeled=pool["x"])
m = Merger(IMAGE, src, mode="teachers", quiet=True, merge=MergeSpec(mode="weights", method="average")).fit(
    unlabeled=pool["x"]
)
print(json.dumps(m.report_["merge"]["seconds_per_batch"]))
print(json.dumps(times({"concat": c.model_, "merged": m.model_}, test["x"][:32])))
