"""Issue 13: a build that tells the truth about the user's own task (real models, real digits).

The task no shipped example resembles: digits 0-4 from a scikit-learn MLP ("digits_lo", trained on sklearn's
0..16 pixel values, so its scale is 16/255) and 5-8 from a PyTorch CNN ("digits_hi"), 8x8 images, 10 labels per
class, a pool of 177 images (tests/fixtures/generate_split.py). The issue's wrong recipe gives the MLP scale
1/255: every parity check passes, so only the checks on what the sources answer can see it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from pasted import assert_pasted
from PIL import Image

from onnxmerge import ImageInput, Merger, OnnxMergeError, Preprocess, Source
from onnxmerge.cli import main
from onnxmerge.learn.estimate import cross_validate, fold_plan
from onnxmerge.learn.health import class_loss_warnings, output_signatures, pool_label_counts, teacher_claims
from onnxmerge.predict import ZModel
from onnxmerge.summary import build_summary

SPLIT = Path(__file__).parent / "fixtures" / "split"
pytestmark = pytest.mark.slow  # a dozen real builds with k-fold estimates: about 3 minutes on 2 cores
RIGHT, WRONG = 16 / 255, 1 / 255
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def split():
    """Held-out digits 0-8 (neither model trained on them): 10 labelled per class, a pool of 177, the rest to test."""
    data = np.load(SPLIT / "heldout.npz")
    x, y = data["x"], data["y"]
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:10] for c in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    pool = rng.permutation(rest)[:177]
    test = np.setdiff1d(rest, pool)
    return {"x": x[labelled], "y": y[labelled], "pool": x[pool], "test_x": x[test], "test_y": y[test]}


def sources(lo_scale: float = RIGHT) -> list[Source]:
    return [
        Source("digits_lo", SPLIT / "digits_lo.onnx", Preprocess(lo_scale, 0.0, 1.0, height=8, width=8, channels=1)),
        Source("digits_hi", SPLIT / "digits_hi.onnx", Preprocess(1 / 255, 0.5, 0.5)),
    ]


def build(mode: str, lo_scale: float, split, labels: bool = True, pool: bool = True) -> Merger:
    z = Merger(ImageInput(8, 8, 1), sources(lo_scale), mode=mode, quiet=True)
    return z.fit(
        split["x"] if labels else None, split["y"] if labels else None, unlabeled=split["pool"] if pool else None
    )


@pytest.fixture(scope="module")
def fit_right(split):
    return build("fit", RIGHT, split)


@pytest.fixture(scope="module")
def teachers_right(split):
    return build("teachers", RIGHT, split, labels=False)


def split_recipe(tmp_path, split, lo_scale: float):
    """A recipe file for the split's two sources, its labelled images and its pool, as a user writes one."""
    np.savez(tmp_path / "train.npz", x=split["x"], y=split["y"])
    np.savez(tmp_path / "pool.npz", x=split["pool"])
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        textwrap.dedent(f"""\
        [input]
        height = 8
        width = 8
        channels = 1
        [[sources]]
        name = "digits_lo"
        model = "{(SPLIT / "digits_lo.onnx").as_posix()}"
        [sources.preprocess]
        height = 8
        width = 8
        channels = 1
        scale = {lo_scale}
        mean = [0.0]
        std = [1.0]
        [[sources]]
        name = "digits_hi"
        model = "{(SPLIT / "digits_hi.onnx").as_posix()}"
        [sources.preprocess]
        scale = {1 / 255}
        mean = [0.5]
        std = [0.5]
        [head]
        train = "train.npz"
        unlabeled = "pool.npz"
        """)
    )
    return recipe


def printed(z: Merger) -> str:
    """What ``onnxmerge build`` prints for this build: the report on stdout, then the warnings on stderr."""
    return "\n".join([build_summary(z, "z.onnx"), *(f"onnxmerge: warning: {w}" for w in z.report_["warnings"])])


def preprocessing_warnings(z: Merger) -> list[str]:
    return [w for w in z.warnings_ if "digits_lo" in w and "preprocess" in w]


# -- 1. held-out accuracy -------------------------------------------------------------------------------------
def test_fit_build_prints_a_cross_validated_accuracy_close_to_the_test_accuracy(fit_right, split):
    estimate = fit_right.report_["expected_accuracy"]
    assert estimate["line"].startswith("expected accuracy ") and "(5-fold, 90 labelled images)" in estimate["line"]
    assert estimate["folds"] == 5 and estimate["held_out_images"] == 90
    assert set(estimate["per_class"]) == set(fit_right.classes_)
    assert all(0 <= v["recall"] <= 1 and v["support"] == 10 for v in estimate["per_class"].values())
    test = float(np.mean(fit_right.predict(split["test_x"]) == split["test_y"]))
    # measured (seed 0 of this split): 0.97 +- 0.02 held out against 0.895 on the 219 test images; seeds 1 and 2:
    # 0.911 vs 0.918 and 0.911 vs 0.913. Recomputing the pool's pseudo-labels per fold moved it by <= 0.011, so
    # the seed-0 gap is the sampling of 90 labelled images, not leakage (benchmarks/RESULTS.md, issue 13).
    assert abs(estimate["accuracy"] - test) < 0.1, (estimate["accuracy"], test)
    assert estimate["accuracy"] < 1.0 and estimate["standard_error"] > 0
    assert_pasted("truth-fit", printed(fit_right))  # docs/reliability.md


def test_expected_accuracy_is_stored_in_z_and_shown_by_inspect(fit_right, tmp_path, capsys):
    path = fit_right.save(tmp_path / "z.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    stored = json.loads(meta["onnxmerge.expected_accuracy"])
    assert stored["accuracy"] == fit_right.report_["expected_accuracy"]["accuracy"]
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mode 'fit'" in out and "suggested feature" not in out
    assert f"classes  (9, in probabilities order): {', '.join(fit_right.classes_)}" in out
    assert f"expected accuracy {stored['accuracy']:.3f}" in out
    assert "source   digits_lo: feature" in out and "sha256 " in out
    assert "head in  digits_lo features (L2-normalised), width 32" in out
    assert main(["inspect", str(path), "--json"]) == 0
    z = json.loads(capsys.readouterr().out)["z"]
    assert z["mode"] == "fit" and z["classes"] == fit_right.classes_ and z["route"] is None
    assert [s["name"] for s in z["sources"]] == ["digits_lo", "digits_hi"]
    assert [b["block"] for b in z["head_inputs"]] == ["features (L2-normalised)"] * 2 + ["log-probabilities"] * 2


def test_folds_hold_out_small_classes_one_at_a_time_and_single_images_never(fit_right, split):
    y = np.asarray(["a"] * 12 + ["b"] * 3 + ["c"])
    plan, k = fold_plan(y)
    assert k == 5 and (plan[-1] == -1) and len(set(plan[12:15])) == 3 and set(plan[:12]) == set(range(5))
    # real features of the real sources, a real head per fold
    x = fit_right.transform(split["x"]).astype(np.float64)
    keep = np.isin(split["y"], ["zero", "one", "two"])
    y = split["y"][keep].copy()
    x = x[keep]
    y[np.flatnonzero(y == "two")[1:]] = "one"  # 'two' keeps a single image
    estimate = cross_validate(x, y, [32, 32], C=0.1, class_weight="balanced")
    assert estimate.too_few == ["two"] and estimate.per_class["two"]["recall"] is None
    assert estimate.images == 29 and estimate.labelled == 30
    assert "'two' too few to estimate (1 image)" in estimate.line()
    nothing = cross_validate(x[:2], np.asarray(["a", "b"]), [32, 32], C=0.1, class_weight="balanced")
    assert nothing.accuracy is None and "not estimated" in nothing.line()


# -- 2. each source on its own task: the wrong-scale recipe warns in both modes ---------------------------------
def test_right_preprocessing_raises_no_source_warning(fit_right, teachers_right):
    assert not preprocessing_warnings(fit_right) and not preprocessing_warnings(teachers_right)
    assert_pasted("truth-teachers", printed(teachers_right))  # docs/reliability.md: what it warns about instead
    own = {c["source"]: c for c in fit_right.report_["source_checks"]["own_labels"]}
    assert own["digits_lo"]["accuracy"] > 0.9 and own["digits_lo"]["images"] == 50  # measured 0.96
    assert own["digits_hi"]["accuracy"] > 0.9 and own["digits_hi"]["images"] == 40  # measured 0.975


@pytest.mark.parametrize("mode,labels", [("fit", True), ("teachers", False), ("fit", "labels only")])
def test_wrong_scale_warns_naming_the_source(split, mode, labels):
    z = build(mode, WRONG, split, labels=bool(labels), pool=labels != "labels only")
    warnings = preprocessing_warnings(z)
    assert len(warnings) == 1, z.warnings_
    assert warnings[0].startswith("source 'digits_lo' looks fed the wrong input") and "scale, mean, std" in warnings[0]
    assert all(c.ok for c in z.parity_)  # parity cannot see it
    assert not [w for w in z.warnings_ if "digits_hi" in w and "preprocess" in w]
    if mode == "fit" and labels is True:
        assert_pasted("truth-wrong-scale", printed(z))  # docs/reliability.md


def test_wrong_scale_warning_goes_to_stderr_not_stdout(split, tmp_path, capsys):
    recipe = split_recipe(tmp_path, split, WRONG)
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "expected accuracy " in captured.out and "warning:" not in captured.out
    assert "onnxmerge: warning: source 'digits_lo' looks fed the wrong input" in captured.err
    assert all(line.startswith("onnxmerge: warning: ") for line in captured.err.strip().splitlines())


def test_output_signatures_on_collapsed_features_and_one_class():
    rng = np.random.default_rng(0)
    entry, warnings = output_signatures("s", np.tile([0.97, 0.01, 0.02], (40, 1)), np.ones((40, 8)), "pool images")
    assert entry["feature_spread"] < 1e-6 and entry["top_label_share"] == 1.0
    assert len(warnings) == 1 and "the same for every image" in warnings[0] and "one label (column 0)" in warnings[0]
    _, none = output_signatures("s", np.eye(3)[rng.integers(0, 3, 40)], rng.normal(size=(40, 8)), "pool images")
    assert none == []
    # one label for 95% of the images, but confidently and image by image (a 2-label teacher shown mostly
    # other teachers' images): not a wrong input
    first = np.concatenate([rng.uniform(0.51, 1.0, 38), [0.01, 0.01]])
    probs = np.stack([first, 1 - first], axis=1)
    entry, none = output_signatures("s", probs, rng.normal(size=(40, 8)), "pool images")
    assert entry["top_label_share"] == 0.95 and entry["output_variation"] > 0.1 and none == []


# -- 3. no silent class loss in teachers mode ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["teachers", "fit"])
def test_every_label_z_hardly_predicts_on_the_pool_is_named(mode, split, teachers_right, fit_right):
    z = teachers_right if mode == "teachers" else fit_right
    counts = z.report_["pool_labels"]
    union = {label for s in z.sources_ if s.name in dict(z.teachers_) for label in s.labels}
    assert set(counts) == union and all(set(c) == {"routed", "predicted", "claimed"} for c in counts.values())
    assert sum(c["predicted"] for c in counts.values()) == 177
    few = 0.25 * 177 / len(counts)
    thin = [
        label
        for label, c in counts.items()
        if c["predicted"] < few or c["routed"] < few or c["predicted"] < 0.35 * c["claimed"]
    ]
    labelled = set(split["y"]) if mode == "fit" else set()
    for label in thin:
        if label not in labelled:
            assert any(repr(label) in w for w in z.warnings_), (label, z.warnings_)
    if mode == "teachers":  # one cluster per label gave 'eight' no pool image (issue 16); 3 per label (177 images) do
        assert counts["eight"]["predicted"] > few, counts


def test_class_loss_warnings_from_counts():
    counts = pool_label_counts(
        ["a", "b", "c"], np.array(["a"] * 60 + ["b"] * 38 + ["c"] * 2), np.array(["a"] * 62 + ["b"] * 38)
    )
    assert counts["c"] == {"routed": 2, "predicted": 0}
    warnings = class_loss_warnings(counts, 100)
    assert len(warnings) == 1 and warnings[0].startswith("Z predicts 'c' for none of the 100 pool images")
    assert class_loss_warnings(counts, 100, labelled={"c"}) == []


def test_a_label_z_answers_for_few_of_the_images_its_teacher_claims_is_named():
    # teacher 0 calls 40 pool images 'b'; routing sends 30 of them to teacher 1, whose labels Z then answers
    probs = [np.eye(2)[[0] * 60 + [1] * 40], np.eye(2)[[0] * 50 + [1] * 50]]
    claims = teacher_claims([["a", "b"], ["c", "d"]], probs)
    assert claims == {"a": 60, "b": 40, "c": 50, "d": 50}
    predicted = np.array(["a"] * 50 + ["b"] * 10 + ["c"] * 20 + ["d"] * 20)
    counts = pool_label_counts(["a", "b", "c", "d"], predicted, predicted, claims)
    assert counts["b"] == {"routed": 10, "predicted": 10, "claimed": 40}
    warnings = class_loss_warnings(counts, 100)
    assert len(warnings) == 1 and warnings[0].startswith("Z predicts 'b' for only 10 of the 40 pool images")
    counts["b"]["predicted"] = 20  # half of the images its teacher claims: no warning
    assert class_loss_warnings(counts, 100) == []


def test_teachers_z_names_its_route_columns_and_estimates_its_new_class(split, digits, tmp_path, capsys):
    x, y = digits
    nines = x[y == "9"][:12]
    z = Merger(ImageInput(8, 8, 1), sources(), mode="teachers", quiet=True)
    z.fit(nines, ["nine"] * len(nines), unlabeled=split["pool"])
    estimate = z.report_["expected_accuracy"]
    assert estimate["measure"] == "new-class recall" and estimate["held_out_images"] == 12
    assert (
        estimate["line"].startswith("expected new-class recall ")
        and "teachers' classes have no labels" in estimate["line"]
    )
    recall = float(np.mean(z.predict(x[y == "9"][12:]) == "nine"))
    assert abs(estimate["accuracy"] - recall) < 0.35, (estimate["accuracy"], recall)
    path = z.save(tmp_path / "z.onnx")
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["z"]
    assert info["mode"] == "teachers" and info["route"] == ["digits_lo", "digits_hi", "nine"]
    assert info["classes"] == z.classes_ and info["classes"][-1] == "nine"


# -- 5. the edges ------------------------------------------------------------------------------------------
def test_python_api_takes_files_folders_and_pil_images(fit_right, split, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, img in enumerate(split["test_x"][:4]):
        Image.fromarray(img[..., 0]).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    files = sorted(folder.rglob("*.png"))
    by_array = fit_right.predict(np.stack([np.asarray(Image.open(f))[..., None] for f in files]))
    assert list(fit_right.predict([str(f) for f in files])) == list(by_array)
    assert list(fit_right.predict(folder)) == list(by_array)
    pil = [Image.open(f).convert("RGB").resize((16, 16)) for f in files]  # converted and resized as files are
    assert fit_right.predict_proba(pil).shape == (4, 9)
    assert fit_right.predict(split["test_x"][0]).shape == (1,)  # one [H, W, C] image


@pytest.mark.parametrize(
    "bad,expected",
    [
        (np.zeros((2, 8, 8, 1), np.float32), "dtype float32; Z takes raw images, uint8 [N, 8, 8, 1]"),
        (np.zeros((2, 28, 28, 1), np.uint8), "shape [2, 28, 28, 1]; Z takes uint8 [N, 8, 8, 1]"),
        ({"not": "images"}, "must be images"),
    ],
)
def test_wrong_input_to_predict_is_a_sentence(fit_right, tmp_path, bad, expected):
    with pytest.raises(OnnxMergeError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        fit_right.predict(bad)
    z = ZModel(fit_right.save(tmp_path / "z.onnx"))
    with pytest.raises(OnnxMergeError) as caught:
        z.predict(bad)
    assert "corrupt" not in str(caught.value)


def test_fit_takes_image_files_with_labels(split, tmp_path):
    files = []
    for i, img in enumerate(split["x"]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img[..., 0]).save(files[-1])
    z = Merger(ImageInput(8, 8, 1), sources(), quiet=True).fit(files, split["y"])
    assert z.report_["train_images"] == 90 and len(z.classes_) == 9


def test_cli_predict_on_a_folder_and_a_glob(fit_right, split, tmp_path, capsys):
    path = fit_right.save(tmp_path / "z.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(split["test_x"][:3]):
        Image.fromarray(img[..., 0]).save(folder / f"{i}.png")
    assert main(["predict", str(path), str(folder)]) == 0
    by_folder = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in by_folder] == [str(folder / f"{i}.png") for i in range(3)]
    assert main(["predict", str(path), str(folder / "*.png")]) == 0
    assert capsys.readouterr().out.strip().splitlines() == by_folder
    assert main(["predict", str(path), str(folder / "*.jpg")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"onnxmerge: error: no file matches {str(folder / '*.jpg')!r}; check the pattern."
    )


def test_evaluate_wrong_size_npz_names_z_not_a_recipe(fit_right, tmp_path, capsys):
    path = fit_right.save(tmp_path / "z.onnx")
    np.savez(tmp_path / "big.npz", x=np.zeros((3, 28, 28, 1), np.uint8), y=np.array(["one"] * 3))
    assert main(["evaluate", str(path), str(tmp_path / "big.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxmerge: error: ") and "Z's input" in err and "recipe" not in err
    assert len(err.splitlines()) == 1


def test_tilde_in_recipe_paths_is_the_home_folder(split, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    np.savez(tmp_path / "train.npz", x=split["x"], y=split["y"])
    (tmp_path / "elsewhere").mkdir()
    recipe = tmp_path / "elsewhere" / "recipe.toml"
    recipe.write_text(
        textwrap.dedent(f"""\
        [input]
        height = 8
        width = 8
        channels = 1
        [[sources]]
        name = "digits_hi"
        model = "{(SPLIT / "digits_hi.onnx").as_posix()}"
        [sources.preprocess]
        scale = {1 / 255}
        mean = [0.5]
        std = [0.5]
        [head]
        train = "~/train.npz"
        """)
    )
    assert main(["build", "~/elsewhere/recipe.toml", "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"]) == 0
    assert "90 labelled images" in capsys.readouterr().out


def test_scalar_mean_and_std_are_one_value_per_channel():
    pre = Preprocess(16 / 255, 0.0, 1.0)
    assert pre.mean == (0.0,) and pre.std == (1.0,)
    with pytest.raises(OnnxMergeError, match="Preprocess std must be a number or a list of numbers"):
        Preprocess(1.0, 0.0, "wide")


def test_demo_finds_its_example_where_a_plain_install_puts_it(tmp_path, monkeypatch):
    import shutil
    import sys

    from onnxmerge import demo

    installed = tmp_path / "share" / "onnxmerge" / "examples" / "fashion"
    shutil.copytree(demo.EXAMPLES[0], installed)
    monkeypatch.setattr(demo, "EXAMPLES", (tmp_path / "no-checkout", installed))
    assert demo.find_example() == installed
    monkeypatch.setattr(demo, "EXAMPLES", (tmp_path / "no-checkout", tmp_path / "nothing"))
    with pytest.raises(OnnxMergeError, match="reinstall onnxmerge"):
        demo.find_example()
    assert sys.prefix  # the installed location is <sys.prefix>/share/onnxmerge/examples/fashion (pyproject)


def test_build_json_report_has_per_class_recall_and_pool_counts(split, tmp_path, capsys):
    recipe = split_recipe(tmp_path, split, RIGHT)
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    recall = report["expected_accuracy"]["per_class"]
    assert set(recall) == set(split["y"]) and all(0 <= v["recall"] <= 1 for v in recall.values())
    assert set(report["pool_labels"]) == set(split["y"])
    assert sum(v["predicted"] for v in report["pool_labels"].values()) == 177
    assert report["output"] == str(tmp_path / "z.onnx") and report["mode"] == "fit"


def test_a_teacher_near_chance_on_its_own_labelled_images_is_named(split):
    """Labels in the wrong order (a real mistake: the recipe's labels are not the head's order) put a source far
    below chance on its own labels; only labelled images can show that, and the build says so."""
    wrong = [
        Source("digits_lo", SPLIT / "digits_lo.onnx", Preprocess(RIGHT, 0.0, 1.0, height=8, width=8, channels=1)),
        Source(
            "digits_hi",
            SPLIT / "digits_hi.onnx",
            Preprocess(1 / 255, 0.5, 0.5),
            labels=["eight", "seven", "six", "five"],
        ),
    ]
    z = Merger(ImageInput(8, 8, 1), wrong, quiet=True).fit(split["x"], split["y"])
    own = {c["source"]: c["accuracy"] for c in z.report_["source_checks"]["own_labels"]}
    assert own["digits_hi"] < 0.2 and own["digits_lo"] > 0.9
    named = [w for w in z.warnings_ if w.startswith("source 'digits_hi' is right on only")]
    assert len(named) == 1 and "of the 40 labelled images of its own labels" in named[0], z.warnings_
    assert not [w for w in z.warnings_ if "'digits_lo'" in w]
