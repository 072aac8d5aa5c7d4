"""The ugly graphs real exporters produce (tests/fixtures/generate_graphs.py): auto feature, build, parity.

1x1-Conv heads with GlobalAveragePool or ReduceMean, LogSoftmax, NHWC non-square inputs, symbolic spatial
sizes, multi-output models, If sub-graphs, dynamo external data, twin architectures, tf2onnx names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from onnxmerge import ImageInput, Merger, OnnxMergeError, Preprocess, Source
from onnxmerge.inspect import find_head
from onnxmerge.modelio import load_model

GRAPHS = Path(__file__).parent / "fixtures" / "graphs"
ENTRIES = {e["file"]: e for e in json.loads((GRAPHS / "manifest.json").read_text())}
BUILDABLE = sorted(name for name in ENTRIES if name != "fixed_batch1.onnx")


def source(name: str, namespace: str = "s") -> Source:
    e = ENTRIES[name]
    head = e["head_output"] if len(e.get("outputs", [])) > 1 else "auto"
    return Source(namespace, GRAPHS / name, Preprocess(e["scale"], tuple(e["mean"]), tuple(e["std"]), height=e["height"],
                                                        width=e["width"], channels=e["channels"]), head_output=head)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_auto_feature(name):
    e = ENTRIES[name]
    head = find_head(load_model(GRAPHS / name), e["head_output"] if len(e.get("outputs", [])) > 1 else "auto")
    assert head.feature == e["feature"], head.reason


@pytest.mark.parametrize("name", BUILDABLE)
def test_build_with_a_partner_keeps_parity(name, digits):
    x, y = digits
    partner = Source("mlp", FIXTURES / "skl_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,), 8, 8, 1))
    merger = Merger(ImageInput(8, 8, 1), [source(name), partner], quiet=True).fit(x[:600], y[:600])
    for check in merger.parity_:
        assert check.ok and check.tolerance == 1e-5, check.line()
    width = merger.source_outputs(x[:2], ["s/feature"])["s/feature"].shape[1]
    assert width == ENTRIES[name]["feature_dim"]
    assert np.mean(merger.predict(x[1000:]) == y[1000:]) > 0.9


def test_twins_with_identical_names_and_their_own_external_data(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [source("twin_a.onnx", "a"), source("twin_b.onnx", "b")], quiet=True)
    merger.fit(x[:600], y[:600])
    assert all(c.ok for c in merger.parity_)
    names = [n.name for n in merger.model_.graph.node]
    assert len(names) == len(set(names)) and any(n.startswith("a/") for n in names) and any(n.startswith("b/") for n in names)


def test_if_subgraph_names_are_prefixed(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [source("if_subgraph.onnx", "p"), source("if_subgraph.onnx", "q")], quiet=True)
    merger.fit(x[:300], y[:300])
    branch_names: list[str] = []
    for node in merger.model_.graph.node:
        for attr in node.attribute:
            if attr.g.node:
                branch_names += [o for n in attr.g.node for o in n.output]
    assert branch_names and all(n.startswith(("p/", "q/")) for n in branch_names)
    assert len(branch_names) == len(set(branch_names))


def test_fixed_batch_is_refused_with_a_sentence(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [source("fixed_batch1.onnx")], quiet=True)
    with pytest.raises(OnnxMergeError, match="fixed batch of 1 baked into its graph .* re-export it with a dynamic"):
        merger.fit(x[:100], y[:100])
