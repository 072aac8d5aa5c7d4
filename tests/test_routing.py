"""Teachers mode, the unlabeled pool and routing, on the shipped Fashion-MNIST demo sources (real models, real data).

A (PyTorch CNN) knows classes 0-4, B (scikit-learn MLP) classes 5-7; the pool is the demo's 800 training
images with their labels unread; the test set is the demo's 1,600 test images of those 8 classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxmerge.contract import ROUTE
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.routing import Teachers, head_kind, to_probabilities
from onnxmerge.recipe import load_recipe

FASHION = Path(__file__).resolve().parent.parent / "examples" / "fashion"


@pytest.fixture(scope="module")
def test_set():
    data = np.load(FASHION / "data" / "test.npz")
    return data["x"], data["y"].astype(str)


def _recipe(tmp_path: Path, head: str) -> Path:
    text = (FASHION / "stage1.toml").read_text()
    text = text[: text.index("[head]")].replace('"models/', f'"{FASHION.as_posix()}/models/') + head
    path = tmp_path / "recipe.toml"
    path.write_text(text.replace('"data/', f'"{FASHION.as_posix()}/data/'))
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Z built in teachers mode from the shipped recipe: no labels, the pool routes."""
    recipe = load_recipe(FASHION / "teachers1.toml", quiet=True)
    return recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)


def _max_probability_routing(merger, x):
    """The naive baseline: each image goes to the source with the higher max-probability."""
    heads = merger.source_outputs(x, [output_names(s.spec.name)["head"] for s in merger.sources_])
    best, picked = None, None
    for source in merger.sources_:
        out = heads[output_names(source.spec.name)["head"]]
        p = to_probabilities(out, head_kind(out))
        label = np.asarray(source.labels)[p.argmax(1)]
        best, picked = (
            (p.max(1), label)
            if best is None
            else (np.maximum(best, p.max(1)), np.where(p.max(1) > best, label, picked))
        )
    return picked


def test_teachers_mode_beats_max_probability_routing(teachers, test_set):
    x, y = test_set
    old = np.isin(y, teachers.classes_)
    z = np.mean(teachers.predict(x[old]) == y[old])
    naive = np.mean(_max_probability_routing(teachers, x[old]) == y[old])
    assert teachers.classes_ == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]
    assert z >= naive + 0.2, (z, naive)  # measured: 0.834 vs 0.376
    assert teachers.report_["routing"]["method"].startswith("label-matched clustering")


def test_teachers_z_is_plain_onnx_with_a_route_output(teachers, test_set, tmp_path):
    path = teachers.save(tmp_path / "z.onnx")
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxmerge.mode"] == "teachers" and json.loads(meta["onnxmerge.labels"]) == teachers.classes_
    outputs = [o.name for o in model.graph.output]
    assert outputs[:2] == ["label", "probabilities"] and ROUTE in outputs
    session = teachers._z_session()
    route, probs = session.run([ROUTE, "probabilities"], {"image": test_set[0][:9]})
    assert route.shape == (9, 2) and np.allclose(route.sum(1), 1, atol=1e-5)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)  # router(s) x p_s(l) sums to one over the union
    check = next(c for c in teachers.parity_ if c.step.startswith("probabilities"))
    assert check.ok and check.tolerance == 1e-5, check.line()


def test_new_class_in_teachers_mode_from_five_images(test_set):
    x, y = test_set
    recipe = load_recipe(FASHION / "teachers2.toml", quiet=True)
    z = recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    assert z.classes_[-1] == "Bag" and z.report_["new_classes"] == ["Bag"]
    recall = np.mean(z.predict(x[y == "Bag"]) == "Bag")
    assert recall >= 0.5, recall  # measured: 0.82


def test_teachers_without_pool_softmax_over_logits(tmp_path, test_set):
    recipe = load_recipe(_recipe(tmp_path, '[head]\nmode = "teachers"\n'), quiet=True)
    z = recipe.merger.fit()
    assert z.classes_ == Teachers.of(["a", "b"], [s.labels for s in z.sources_]).union
    assert "routing" not in z.report_ and z.predict(test_set[0][:3]).shape == (3,)


def test_fit_on_pool_pseudo_labels(tmp_path, test_set):
    x, y = test_set
    recipe = load_recipe(_recipe(tmp_path, '[head]\nunlabeled = "data/train.npz"\n'), quiet=True)
    z = recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    pseudo = z.report_["pseudo_labels"]
    assert 0 < pseudo["kept"] <= pseudo["of"] == 800
    old = np.isin(y, z.classes_)
    assert np.mean(z.predict(x[old]) == y[old]) > 0.7


@pytest.mark.parametrize(
    "head,expected",
    [
        ('[head]\nmode = "teachers"\ntrain = "data/new_class.npz"\n', "need an unlabeled pool"),
        ('[head]\nmode = "teachers"\ntrain = "data/train.npz"\nunlabeled = "data/train.npz"\n', "new classes only"),
        ('[head]\nmode = "fit"\n', "needs head.train"),
    ],
)
def test_teachers_mode_mistakes(tmp_path, head, expected):
    recipe = load_recipe(_recipe(tmp_path, head), quiet=True) if "needs head.train" not in expected else None
    with pytest.raises(OnnxMergeError, match=expected):
        if recipe is None:
            load_recipe(_recipe(tmp_path, head), quiet=True)
        else:
            recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)


def test_teachers_merge_shared_labels():
    t = Teachers.of(["a", "b"], [["cat", "dog"], ["dog", "bird"]])
    assert t.union == ["cat", "dog", "bird"]
    assert t.merge_matrix().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
    union = t.union_probabilities([np.array([[0.2, 0.8]]), np.array([[0.9, 0.1]])])
    assert union.tolist() == [[0.2, 0.9, 0.1]]


@pytest.mark.parametrize(
    "scores,kind",
    [
        (np.array([[0.2, 0.8], [0.5, 0.5]]), "probabilities"),
        (np.log(np.array([[0.2, 0.8], [0.5, 0.5]])), "log-probabilities"),
        (np.array([[2.0, -1.0], [0.3, 0.1]]), "logits"),
    ],
)
def test_head_kind(scores, kind):
    assert head_kind(scores) == kind
    assert np.allclose(to_probabilities(scores, kind).sum(1), 1, atol=1e-6)


def test_a_non_teacher_only_contributes_features(tmp_path):
    path = _recipe(tmp_path, '[head]\nmode = "teachers"\n')
    path.write_text(path.read_text().replace('name = "b"', 'name = "b"\nteacher = false', 1))
    recipe = load_recipe(path, quiet=True)
    z = recipe.merger.fit()
    assert z.classes_ == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat"]
    assert list(z.report_["teachers"]) == ["a"]
    assert z.model_.graph.output[2].name == "features"  # b's features are still part of Z


def test_cli_build_in_teachers_mode_says_how_it_routed(tmp_path, capsys):
    from onnxmerge.cli import main

    assert main(["build", str(FASHION / "teachers1.toml"), "-o", str(tmp_path / "z.onnx"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "routing: label-matched clustering + logistic-regression router on 800 pool images" in out
    assert "parity: probabilities vs the teachers' routed union (numpy)" in out and (tmp_path / "z.onnx").is_file()


def test_a_teacher_no_pool_image_is_routed_to_gets_route_zero(test_set):
    """Two copies of one teacher: the pool's images of their labels all go to one copy. Z used to index a router
    column that did not exist (onnxruntime failed in a Gather); now the other copy's route is 0, with a warning."""
    from dataclasses import replace

    recipe = load_recipe(FASHION / "teachers1.toml", quiet=True)
    merger = recipe.merger
    merger.sources = [merger.sources[0], replace(merger.sources[0], name="a_copy"), merger.sources[1]]
    z = merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    assert all(check.ok for check in z.parity_)
    assert any("no pool image was routed to 'a_copy'" in w for w in z.warnings_), z.warnings_
    from onnxmerge.runtime.session import make_session

    x, y = test_set
    saved = onnx.load_from_string(z.model_.SerializeToString())  # Z as written: plain, self-contained ONNX
    route = make_session(saved).run([ROUTE], {"image": x[:50]})[0]
    assert route.shape == (50, 3) and np.all(route[:, 1] == 0)
    known = y != "Bag"
    assert np.mean(z.predict(x[known]) == y[known]) > 0.8  # measured: 0.831, as with one copy (0.834)


@pytest.fixture(scope="module")
def demo_pool(teachers):
    """The demo pool's routing inputs (features, teacher probabilities) and its true labels, from real Z outputs."""
    from onnxmerge.learn.head import HeadInput
    from onnxmerge.learn.routing import l2_blocks

    data = np.load(FASHION / "data" / "train.npz")
    x, y = data["x"], data["y"].astype(str)
    names = [output_names(s.name)["feature"] for s in teachers.sources_]
    out = teachers.source_outputs(x, names + [output_names(n)["head"] for n, _ in teachers.teachers_])
    features = l2_blocks([out[n] for n in names])
    probs = [HeadInput.probabilities(out, n, k) for n, k in teachers.teachers_]
    labels = {s.name: s.labels for s in teachers.sources_}
    return (
        features,
        probs,
        y,
        Teachers.of([n for n, _ in teachers.teachers_], [labels[n] for n, _ in teachers.teachers_]),
    )


def _true_source(space, y):
    return np.asarray([next(i for i, own in enumerate(space.labels) if c in own) for c in y])


def test_route_pool_leaves_out_images_the_runs_disagree_on(demo_pool):
    from onnxmerge.learn.routing import route_pool

    features, probs, y, space = demo_pool
    routing = route_pool(features, space, probs, runs=10)
    targets = routing.targets()
    kept = targets >= 0
    assert np.all(routing.agreement[kept] >= routing.min_agreement)
    assert np.all(routing.agreement[~kept] < routing.min_agreement)
    true = _true_source(space, y)
    # the agreed images are routed better than the pool as a whole (measured: 0.93 on 78% vs 0.85 on all)
    assert np.mean(targets[kept] == true[kept]) > np.mean(routing.source == true) + 0.03
    assert sum(routing.label_counts().values()) == kept.sum()
    assert sum(routing.label_counts(agreed=False).values()) == len(features)


def test_route_pool_subsamples_kmeans_without_losing_routing(demo_pool):
    from onnxmerge.learn.routing import route_pool

    features, probs, y, space = demo_pool
    true = _true_source(space, y)
    full = np.mean(route_pool(features, space, probs, runs=10).source == true)
    sampled = np.mean(route_pool(features, space, probs, runs=10, fit_images=300).source == true)
    assert sampled >= full - 0.05, (sampled, full)


def test_scarce_labels_names_a_label_missing_from_the_pool(demo_pool):
    from onnxmerge.learn.routing import route_pool

    features, probs, y, space = demo_pool
    keep = y != "Trouser"
    routing = route_pool(features[keep], space, [p[keep] for p in probs], runs=10)
    assert "Trouser" in routing.scarce_labels(), routing.label_counts()
    full = route_pool(features, space, probs, runs=10)
    assert "Trouser" not in full.scarce_labels() and full.label_counts()["Trouser"] > 20


def test_teachers_report_counts_labels_and_router_targets(teachers):
    routing = teachers.report_["routing"]
    assert 0 < routing["router_targets"] <= 800
    assert set(routing["label_counts"]) == set(teachers.classes_)
    assert set(routing["scarce_labels"]) <= set(teachers.classes_)
    # Z's Shirt recall on the demo's test set is 0.085 (Shirt sits between a's T-shirts and b's Coats): named
    assert any("'Shirt'" in w for w in teachers.warnings_), teachers.warnings_


def test_train_router_is_a_function_of_arrays():
    """The build's router fit (stages.route.train_router) on plain arrays: pool rows without a target are left
    out, and images whose teacher is known weigh as much as the whole pool."""
    from onnxmerge.stages.route import train_router

    rng = np.random.default_rng(0)
    targets = np.r_[np.zeros(20, int), np.ones(15, int), np.full(5, -1)]
    x_pool = rng.standard_normal((40, 4)) + 3 * targets[:, None]
    known = [(rng.standard_normal((5, 4)), 0)]
    router, (x, y, weight) = train_router(x_pool, targets, known, [4], 1.0, 2)
    assert len(x) == 40 and list(y) == [0] * 20 + [1] * 15 + [0] * 5
    assert np.all(weight[:35] == 1) and np.allclose(weight[35:], 35 / 5)
    assert np.mean(router.predict(x_pool[:35]) == targets[:35]) > 0.9


def test_build_hints_at_a_generic_backbone_only_where_routing_is_unsure(teachers, tmp_path, capsys, monkeypatch):
    """The demo's easy 5 + 3 split (the k-means runs disagree on about 20% of its pool) gets no hint; where the
    share reaches the threshold the hint is one line under the forecast, and never with a teacher = false source
    (a recipe that has one is built through the CLI here, with the threshold at 0)."""
    from onnxmerge import summary
    from onnxmerge.cli import main

    disagreed = teachers.report_["routing"]["disagreed"]
    assert 0 < disagreed < summary.GENERIC_HINT_SHARE
    assert "routing: hint:" not in summary.build_summary(teachers, "z.onnx")
    monkeypatch.setattr(summary, "GENERIC_HINT_SHARE", disagreed)
    lines = summary.build_summary(teachers, "z.onnx").splitlines()
    hints = [i for i, line in enumerate(lines) if line.startswith("routing: hint:")]
    assert len(hints) == 1 and lines[hints[0] - 1].startswith("forecast: ") and "teacher = false" in lines[hints[0]]

    monkeypatch.setattr(summary, "GENERIC_HINT_SHARE", 0.0)
    text = (FASHION / "teachers1.toml").read_text().replace('"models/', f'"{FASHION.as_posix()}/models/')
    extra = '[[sources]]\nname = "c"\nmodel = "models/b_sklearn_mlp.onnx"\nteacher = false\n'
    extra += text[text.index("[sources.preprocess]", text.index('name = "b"')) : text.index("[head]")]
    text = text.replace("[head]", extra.replace('"models/', f'"{FASHION.as_posix()}/models/') + "[head]")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text.replace('"data/', f'"{FASHION.as_posix()}/data/'))
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "source c: b_sklearn_mlp.onnx" in out and "forecast: " in out and "routing: hint:" not in out
