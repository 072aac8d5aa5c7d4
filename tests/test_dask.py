"""The Dask engine (extra onnxmerge[dask]) against the local one, on a real LocalCluster on loopback:
identical features, Z and predictions; a worker killed mid-run; an unreadable image; no scheduler."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_recipe
from pasted import assert_pasted
from PIL import Image

from onnxmerge.cli import main
from onnxmerge.files.images import read_images
from onnxmerge.files.listing import list_images
from onnxmerge.recipe import load_recipe

distributed = pytest.importorskip("distributed")
pq = pytest.importorskip("pyarrow.parquet")
pytestmark = pytest.mark.slow  # a Dask LocalCluster and builds on it: about 5 minutes on 2 cores

SOURCES = [("a", "torch_legacy_cnn.onnx"), ("b", "jax_cnn.onnx")]


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1 (restarted by their nannies if killed)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, memory_limit="1GiB"
    ) as local:
        yield local


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, digits_npz, cluster):
    """The same recipe fitted by the local engine and by the Dask engine (via the scheduler's address)."""
    folder = tmp_path_factory.mktemp("dask-build")
    recipe = write_recipe(folder, SOURCES, digits_npz["train"])
    local = load_recipe(recipe, quiet=True).merger.fit(load_recipe(recipe).train)
    dask = load_recipe(recipe, quiet=True).merger
    dask.engine, dask.address = "dask", cluster.scheduler_address
    dask.fit(load_recipe(recipe).train)
    yield local, dask, folder
    dask.close()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, digits):
    """1,200 digits as PNG files in two folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("dask-images")
    x, _ = digits
    for i in range(1200):
        (root / str(i % 2)).mkdir(exist_ok=True)
        Image.fromarray(x[i, ..., 0]).save(root / str(i % 2) / f"{i:05d}.png")
    (root / "1" / "00007_bad.png").write_bytes(b"this is not a png")
    return root


def test_features_and_z_are_identical(fitted, digits):
    local, dask, _ = fitted
    x = digits[0][1000:]
    assert np.array_equal(local.transform(x), dask.transform(x))  # bit for bit, in the images' order
    for name in ("a/feature", "b/head"):
        assert np.array_equal(local.source_outputs(x, [name])[name], dask.source_outputs(x, [name])[name])
    assert local.model_.SerializeToString() == dask.model_.SerializeToString()  # the same Z, byte for byte
    assert np.array_equal(local.predict_proba(x), dask.predict_proba(x))
    assert [c.line() for c in local.parity_] == [c.line() for c in dask.parity_]


def test_predictions_identical_and_a_bad_image_reported(fitted, image_files, cluster, tmp_path, capsys):
    local, _, _ = fitted
    z = local.save(tmp_path / "z.onnx")
    out = {}
    for engine in (["--engine", "local"], ["--address", cluster.scheduler_address]):
        path = tmp_path / f"{engine[0][2:]}.parquet"
        assert (
            main(
                [
                    "predict",
                    str(z),
                    str(image_files),
                    "--out",
                    str(path),
                    "--probabilities",
                    "--chunk",
                    "256",
                    "--quiet",
                    *engine,
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 2 and "00007_bad.png cannot be read" in err[0] and "1 of 1201 images" in err[1], err
        printed = (
            (captured.err + captured.out).replace(str(image_files), "photos").replace(str(path), "predictions.parquet")
        )
        assert_pasted("dask-predict", printed)  # docs/performance.md, both engines alike
        assert len(list(path.glob("part-*.parquet"))) == 5 and not list(tmp_path.glob("*.partial-*"))
        out[engine[0]] = pq.read_table(path)
    assert out["--engine"].equals(out["--address"])  # bit for bit, same row order
    table = out["--engine"]
    files = [f for f in list_images([str(image_files)]) if "bad" not in f]
    assert table.column("file").to_pylist() == files and table.num_rows == 1200
    labels, probs = local.predict(read_images(files, local.input)), local.predict_proba(read_images(files, local.input))
    assert table.column("label").to_pylist() == labels.tolist()
    assert np.array_equal(np.stack(table.column("probabilities").to_numpy(zero_copy_only=False)), probs)
    assert np.array_equal(table.column("probability").to_numpy(), probs.max(axis=1))


def test_an_unreadable_image_is_skipped_alike_here_and_on_the_cluster(fitted, image_files, cluster, tmp_path, capsys):
    """Printed predictions (no --out): the local engine and the cluster print the same rows and the same warnings
    for the file that is not an image (the local engine used to stop at it)."""
    local, _, _ = fitted
    z = local.save(tmp_path / "z.onnx")
    runs = []
    for engine in ([], ["--address", cluster.scheduler_address]):
        assert main(["predict", str(z), str(image_files / "1"), "--quiet", "--chunk", "256", *engine]) == 0
        runs.append(capsys.readouterr())
    assert runs[0].out == runs[1].out and len(runs[0].out.splitlines()) == 600
    assert runs[0].err == runs[1].err and "00007_bad.png cannot be read" in runs[0].err
    assert (
        runs[0].err.splitlines()[-1] == "onnxmerge: warning: 1 of 601 images could not be read and have no prediction."
    )


def test_a_killed_worker_is_retried_and_the_output_is_identical(fitted, image_files, cluster, tmp_path, capsys):
    local, _, _ = fitted
    z = local.save(tmp_path / "z.onnx")
    reference = tmp_path / "reference.parquet"
    assert main(["predict", str(z), str(image_files), "--out", str(reference), "--chunk", "16", "--quiet"]) == 0
    client = distributed.Client(cluster.scheduler_address)
    pids = client.run(os.getpid)
    out = tmp_path / "killed.parquet"
    result = {}
    run = threading.Thread(
        target=lambda: result.update(
            rc=main(
                [
                    "predict",
                    str(z),
                    str(image_files),
                    "--out",
                    str(out),
                    "--chunk",
                    "16",
                    "--quiet",
                    "--address",
                    cluster.scheduler_address,
                ]
            )
        )
    )
    run.start()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("killed.parquet.partial-*/part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    done = len(list(tmp_path.glob("killed.parquet.partial-*/part-*.parquet")))
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # mid-run: 76 chunks, `done` of them written
    run.join(120)
    client.close()
    assert 0 < done < 76 and result["rc"] == 0
    assert pq.read_table(out).equals(pq.read_table(reference))
    capsys.readouterr()


def test_an_unreachable_scheduler_is_one_sentence(fitted, image_files, tmp_path, capsys):
    local, _, folder = fitted
    z = local.save(tmp_path / "z.onnx")
    assert main(["predict", str(z), str(image_files / "0" / "00000.png"), "--address", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxmerge: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert_pasted("dask-unreachable", err)  # docs/performance.md
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    recipe = folder / "recipe.toml"
    assert main(["build", str(recipe), "-o", str(tmp_path / "z2.onnx"), "--address", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert not (tmp_path / "z2.onnx").exists()


def test_the_recipe_names_the_engine(fitted, tmp_path, capsys):
    _, _, folder = fitted
    text = (folder / "recipe.toml").read_text()
    for table, message in (
        ('[engine]\nname = "dask"\nadress = "tcp://x:1"\n', "did you mean 'address'"),
        ('[engine]\nname = "dusk"\n', "did you mean 'dask'"),
        ('[engine]\nname = "local"\nworkers = 2\n', 'need engine.name = "dask"'),
    ):
        recipe = tmp_path / "r.toml"
        recipe.write_text(text.replace("[head]", table + "\n[head]"))
        assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx")]) == 2
        assert message in capsys.readouterr().err
    recipe.write_text(text.replace("[head]", '[engine]\nname = "dask"\naddress = "tcp://10.255.255.1:8786"\n\n[head]'))
    assert load_recipe(recipe).merger.get_params()["address"] == "tcp://10.255.255.1:8786"


def test_evaluate_on_the_cluster_equals_local(fitted, image_files, digits_npz, cluster, tmp_path, capsys):
    """``evaluate --address``: a labelled folder (read by the workers) and an .npz (chunks of its array)
    give the same report as the local engine; only confusion counts come back."""
    local, _, _ = fitted
    z = local.save(tmp_path / "z.onnx")
    folder = tmp_path / "labelled"
    for f in list_images([str(image_files)])[:300]:
        if "bad" not in f:
            (folder / Path(f).parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(f, folder / Path(f).parent.name / Path(f).name)
    for data in (folder, digits_npz["test"]):
        reports = []
        for engine in (["--engine", "local"], ["--address", cluster.scheduler_address, "--chunk", "64"]):
            assert main(["evaluate", str(z), str(data), "--json", "--quiet", *engine]) == 0
            reports.append(capsys.readouterr().out)
        assert reports[0] == reports[1] and '"accuracy"' in reports[0]


def test_fsspec_urls_are_read_by_the_workers(fitted, image_files, cluster, tmp_path, capsys):
    """An fsspec URL (``file://`` here: what the workers reach) lists and reads like the local path."""
    local, _, _ = fitted
    z = local.save(tmp_path / "z.onnx")
    sub = image_files / "0"
    tables = []
    for where in (str(sub), f"file://{sub}"):
        out = tmp_path / f"p{len(tables)}.parquet"
        assert (
            main(["predict", str(z), where, "--out", str(out), "--address", cluster.scheduler_address, "--quiet"]) == 0
        )
        tables.append(pq.read_table(out))
    assert tables[0].num_rows == 600
    assert tables[0].column("label").equals(tables[1].column("label"))
    assert [f.removeprefix("file://") for f in tables[1].column("file").to_pylist()] == tables[0].column(
        "file"
    ).to_pylist()
    capsys.readouterr()


def test_a_pool_folder_is_read_by_the_workers(image_files, digits_npz, cluster, tmp_path, capsys):
    """A cluster build reads a pool folder's files on the workers (the pixels never come to the client)
    and writes the same Z, byte for byte, as the local build that decodes them here; in mode "fit" (the
    pool pseudo-labelled) and in mode "teachers". A broken file in the pool is one sentence."""
    from onnxmerge.files.images import ImageFiles

    pool = image_files / "0"  # 600 good PNGs
    fit = write_recipe(tmp_path, SOURCES, digits_npz["train"], extra=f'unlabeled = "{pool.as_posix()}"\n')
    teachers = tmp_path / "teachers.toml"
    teachers.write_text(
        fit.read_text()
        .replace('mode = "fit"', 'mode = "teachers"')
        .replace(f'train = "{Path(digits_npz["train"]).as_posix()}"\n', "")
    )
    for recipe in (fit, teachers):
        models = []
        for address in (None, cluster.scheduler_address):
            loaded = load_recipe(recipe, quiet=True)
            merger = loaded.merger
            merger.engine, merger.address = ("dask", address) if address else ("local", None)
            merger.fit(loaded.train, unlabeled=loaded.unlabeled)
            models.append(merger.model_.SerializeToString())
            merger.close()
        assert models[0] == models[1], recipe.name
    assert len(ImageFiles(list_images([str(pool)]), load_recipe(fit).merger.input)[::2]) == 300
    broken = tmp_path / "broken.toml"
    broken.write_text(teachers.read_text().replace(pool.as_posix(), (image_files / "1").as_posix()))
    assert (
        main(["build", str(broken), "-o", str(tmp_path / "z.onnx"), "--quiet", "--address", cluster.scheduler_address])
        == 2
    )
    err = capsys.readouterr().err
    assert "00007_bad.png cannot be read" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "z.onnx").exists()
