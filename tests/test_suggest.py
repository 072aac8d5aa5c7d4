"""`onnxmerge suggest`: pool images worth a label, copied into a folder that is the recipe's train; the
build ignores that folder's top-level files with one note; a second run continues where the labels stop."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from conftest import write_recipe
from PIL import Image
from sklearn.datasets import load_digits

from onnxmerge.cli import main
from onnxmerge.files.images import load_labelled
from onnxmerge.graph.preprocess import ImageInput
from onnxmerge.learn.select import choose, smallest_margin, typical

TEACHERS = [("low", "torch_legacy_cnn.onnx"), ("high", "jax_cnn.onnx")]  # digits 0-4 | 5-9, two exporters


@pytest.fixture(scope="module")
def project(tmp_path_factory, digits):
    """A recipe whose train is the labelling folder ``labels`` (not there yet) and whose pool is 200 PNGs."""
    x, y = digits
    folder = tmp_path_factory.mktemp("suggest")
    pool = folder / "pool" / "batch1"  # sub-folder names of a pool are ignored
    pool.mkdir(parents=True)
    truth = {}
    for i in np.random.default_rng(3).choice(len(x), 200, replace=False):
        Image.fromarray(x[i, ..., 0]).save(pool / f"d{i:04d}.png")
        truth[f"d{i:04d}.png"] = y[i]
    recipe = write_recipe(folder, TEACHERS, "labels", extra='unlabeled = "pool"\n')
    return folder, recipe, truth


def rows(folder) -> list[dict]:
    with open(folder / "suggestions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def label_by_hand(labels, truth, files) -> None:
    """What a person does with a suggestion: move the file into ``labels/<its class>/``."""
    for name in files:
        (labels / truth[name]).mkdir(exist_ok=True)
        os.replace(labels / name, labels / truth[name] / name)


def test_suggest_label_build_and_suggest_again(project, capsys):
    folder, recipe, truth = project
    labels = folder / "labels"
    assert main(["suggest", str(recipe), "-n", "12", "-o", str(labels), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "suggested 12 of 200 pool images" in out and "typical images" in out
    assert "forecast: the k-means runs disagree on " in out  # the routing's uncertainty, from this pool
    first = rows(labels)
    assert list(first[0])[:4] == ["file", "source_file", "guess", "confidence"]
    assert len(first) == 12 and len({r["source_file"] for r in first}) == 12
    classes = [str(d) for d in range(10)]
    for row in first:
        source = folder / row["source_file"] if not os.path.isabs(row["source_file"]) else row["source_file"]
        assert (labels / row["file"]).read_bytes() == open(source, "rb").read()  # a copy, byte for byte
        assert row["guess"] in classes and 0 <= float(row["confidence"]) <= 1
        p = [float(row[f"p:{c}"]) for c in classes if f"p:{c}" in row]
        assert abs(sum(p) - 1) < 0.01 and max(p) == pytest.approx(float(row["confidence"]), abs=1e-4)
    # typical images of distinct clusters: 12 picks cover most of the 10 digits
    assert len({truth[r["file"]] for r in first}) >= 7

    # the folder as train before anything is labelled: built from the pool alone, with the note
    assert main(["build", str(recipe), "-o", str(folder / "z0.onnx"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "onnxmerge: note:" in err and "12 top-level images (not labelled yet) ignored" in err

    label_by_hand(labels, truth, [r["file"] for r in first[:9]])
    assert main(["suggest", str(recipe), "-n", "10", "-o", str(labels), "--quiet"]) == 0
    second = rows(labels)
    assert "Z built from 9 labelled images" in capsys.readouterr().out
    # the 3 still waiting stay listed first; the 10 new ones are neither labelled nor waiting before
    assert [r["file"] for r in second[:3]] == [r["file"] for r in first[9:]]
    assert len(second) == 13 and len({r["source_file"] for r in second} | {r["source_file"] for r in first}) == 22

    label_by_hand(labels, truth, [r["file"] for r in second])
    assert main(["build", str(recipe), "-o", str(folder / "z1.onnx"), "--quiet"]) == 0
    assert "note" not in capsys.readouterr().err
    data = load_labelled(labels, ImageInput(8, 8, 1))
    assert len(data.x) == 22 and all(truth[os.path.basename(f)] == label for f, label in zip(data.files, data.y))


def test_an_image_set_aside_or_renamed_is_never_suggested_again(project, capsys, tmp_path):
    folder, recipe, truth = project
    labels = tmp_path / "labels"
    text = recipe.read_text().replace('train = "labels"', f'train = "{labels.as_posix()}"')
    other = folder / "other.toml"
    other.write_text(text)
    assert main(["suggest", str(other), "-n", "6", "-o", str(labels), "--quiet"]) == 0
    first = rows(labels)
    (labels / ".none").mkdir()
    os.replace(labels / first[0]["file"], labels / ".none" / first[0]["file"])  # "none of these"
    (labels / "7").mkdir()
    os.replace(labels / first[1]["file"], labels / "7" / "renamed.png")  # renamed: known by its pixels
    shutil.rmtree(labels / ".none")  # ...set aside and then deleted: it may come back, that is fine
    assert main(["suggest", str(other), "-n", "6", "-o", str(labels), "--quiet"]) == 0
    second = {r["source_file"] for r in rows(labels)}
    assert first[1]["source_file"] not in second
    assert all(r["source_file"] in second for r in first[2:])  # still waiting: listed, not copied twice
    assert len(list(labels.glob("*.png"))) == len(second) == 10


def test_a_pool_npz_is_copied_as_lossless_png(tmp_path, digits, capsys):
    x, y = digits
    np.savez(tmp_path / "pool.npz", x=x[:150])
    recipe = write_recipe(tmp_path, TEACHERS, "labels", extra='unlabeled = "pool.npz"\n')
    assert main(["suggest", str(recipe), "-n", "4", "-o", str(tmp_path / "labels"), "--quiet"]) == 0
    for row in rows(tmp_path / "labels"):
        index = int(row["source_file"].rsplit("[", 1)[1].rstrip("]"))
        assert row["source_file"].endswith(f"pool.npz[{index}]") and row["file"] == f"pool-{index}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "labels" / row["file"])), x[index, ..., 0])


@pytest.mark.parametrize(
    "change, args, expected",
    [
        (("unlabeled = ", "# unlabeled = "), ["-n", "3"], "has none; add [head] unlabeled"),
        (None, ["-n", "0"], "-n must be at least 1"),
        (None, ["-n", "2", "-o", "recipe.toml"], "is a file; give a folder"),
    ],
)
def test_bad_input_is_one_sentence(project, tmp_path, capsys, change, args, expected):
    folder, recipe, _ = project
    if change:
        changed = folder / "changed.toml"
        changed.write_text(recipe.read_text().replace(*change))
        recipe = changed
    args = [str(folder / a) if a.endswith(".toml") else a for a in args]
    assert main(["suggest", str(recipe), *args, *(["-o", str(tmp_path / "out")] if "-o" not in args else [])]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_margin_picks_the_smallest_gaps_among_the_available():
    p = np.array([[0.5, 0.5, 0], [0.9, 0.1, 0], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    available = np.array([True, True, True, True, False])
    assert list(smallest_margin(p, 2, available)) == [0, 2]
    picks = choose(np.eye(5), p, 2, available, np.zeros((9, 5)), per_class=3)  # 9 = 3 per class of 3: margin
    assert picks.strategy == "margin" and list(picks.index) == [0, 2]


def test_typical_picks_cover_the_clusters_no_label_covers():
    """Real digits: pixel vectors of 0s, 1s and 6s; one label given on a 0: the two picks are a 1 and a 6."""
    data = load_digits()
    keep = np.isin(data.target, [0, 1, 6])
    x, y = data.data[keep] / 16.0, data.target[keep]
    given = x[y == 0][:1]
    picks = typical(x, 2, np.ones(len(x), bool), given)
    assert sorted(y[picks]) == [1, 6]
    available = y != 6  # every 6 labelled or waiting already: only 0s and 1s can be picked
    picks = choose(x, np.full((len(x), 3), 1 / 3), 3, available, given)
    assert picks.strategy == "typical" and len(set(picks.index)) == 3 and available[picks.index].all()
    assert 1 in y[picks.index]  # the one class left that no label covers


def test_forecast_reads_the_nearest_tuning_anchor(monkeypatch):
    from onnxmerge.learn import select
    from onnxmerge.summary import forecast_line

    monkeypatch.setattr(select, "FORECAST_ANCHORS", (("K=2", 0.2, 5), ("K=3", 0.35, None)))
    assert select.forecast(0.1) == select.Forecast(5, "K=2", 0.2)
    assert select.forecast(0.3).per_class is None and select.forecast(0.3).like == "K=3"
    assert "(K=2, 20%), 5 chosen labels per class brought Z within 2 points" in forecast_line(0.12)
    assert "(K=3, 35%), even 40 chosen labels per class left Z more than 2 points" in forecast_line(0.5)
    monkeypatch.setattr(select, "FORECAST_ANCHORS", ())
    assert select.forecast(0.3) is None and forecast_line(0.3).endswith("(where routing guesses)")
