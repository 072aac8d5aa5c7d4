"""The feature cache checks what it reads: damaged, reordered, oversized, linked and special entries are ignored
(with a warning naming the file) and the features recomputed; Z is then the same as a fresh build's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import FIXTURES, fixture_entry

from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.runtime import cache as feature_cache

KEY = "ab" * 32


def fixture_source(name, fixture):
    entry = fixture_entry(fixture)
    return Source(name, FIXTURES / fixture, Preprocess(entry["scale"], tuple(entry["mean"]), tuple(entry["std"])))


def entry_path(folder, key=KEY):
    return folder / f"{key}{feature_cache.SUFFIX}"


def stored(folder, rows=20, cols=6):
    features = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    assert feature_cache.store(folder, KEY, features) == entry_path(folder)
    return features


def ignored(folder, capsys, *expected, rows=20, check=None):
    assert feature_cache.load(folder, KEY, rows, check=check) is None
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"onnxmerge: warning: feature cache entry {entry_path(folder)} ") and "\n" not in err, err
    assert err.endswith("; ignored, the features are recomputed.")
    for text in expected:
        assert text in err, err


def test_an_entry_reads_back_exactly(tmp_path, capsys):
    features = stored(tmp_path)
    assert np.array_equal(feature_cache.load(tmp_path, KEY, 20, check=lambda rows: features[rows]), features)
    assert capsys.readouterr().err == "" and sorted(p.name for p in tmp_path.iterdir()) == [entry_path(tmp_path).name]


def test_a_missing_entry_is_silent(tmp_path, capsys):
    assert feature_cache.load(tmp_path, KEY, 20) is None and capsys.readouterr().err == ""


def test_one_flipped_bit_is_found(tmp_path, capsys):
    stored(tmp_path)
    data = bytearray(entry_path(tmp_path).read_bytes())
    data[-7] ^= 0x10
    entry_path(tmp_path).write_bytes(bytes(data))
    ignored(tmp_path, capsys, "does not match its SHA-256")


def test_a_truncated_entry(tmp_path, capsys):
    stored(tmp_path)
    entry_path(tmp_path).write_bytes(entry_path(tmp_path).read_bytes()[:-100])
    ignored(tmp_path, capsys, "truncated")


def test_an_entry_renamed_from_another_key(tmp_path, capsys):
    feature_cache.store(tmp_path, "cd" * 32, np.ones((20, 6), np.float32))
    os.replace(entry_path(tmp_path, "cd" * 32), entry_path(tmp_path))
    ignored(tmp_path, capsys, "another key")


def forged(folder, shape, data=b""):
    """An entry whose header an attacker wrote: a valid format and digest over whatever they chose."""
    header = json.dumps({"format": 2, "key": KEY, "shape": shape, "dtype": "<f4", "sha256": "0" * 64}).encode()
    entry_path(folder).write_bytes(feature_cache.MAGIC + len(header).to_bytes(4, "little") + header + data)


def test_a_header_claiming_18_tib_allocates_nothing(tmp_path, capsys):
    forged(tmp_path, [20, 2**40], b"\0" * 64)
    ignored(tmp_path, capsys, "claims shape [20, 1099511627776]")
    forged(tmp_path, [20, 1000], b"\0" * 64)  # a plausible shape the file is too short for
    ignored(tmp_path, capsys, "not the 80,", "truncated")


def test_a_huge_header_length(tmp_path, capsys):
    entry_path(tmp_path).write_bytes(feature_cache.MAGIC + (2**31).to_bytes(4, "little"))
    ignored(tmp_path, capsys, "header")


def test_a_fifo_entry_does_not_block(tmp_path, capsys):
    os.mkfifo(entry_path(tmp_path))
    ignored(tmp_path, capsys, "not a regular file")


def test_a_symlink_entry_is_not_followed(tmp_path, capsys):
    os.symlink("/etc/passwd", entry_path(tmp_path))
    ignored(tmp_path, capsys, "symbolic link")


def test_an_old_format_entry(tmp_path, capsys):
    np.save(entry_path(tmp_path), np.ones((20, 6), np.float32))
    os.replace(str(entry_path(tmp_path)) + ".npy", entry_path(tmp_path))
    ignored(tmp_path, capsys, "not an onnxmerge feature file")


def test_consistently_rewritten_rows_fail_the_spot_check(tmp_path, capsys):
    """Digest and header recomputed by whoever shuffled the rows: only recomputing rows can tell."""
    features = np.random.default_rng(0).random((300, 6), dtype=np.float32)
    feature_cache.store(tmp_path, KEY, features[np.random.default_rng(1).permutation(300)])
    ignored(tmp_path, capsys, "spot check", rows=300, check=lambda rows: features[rows])


@pytest.fixture(scope="module")
def fresh_build(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True)
    merger.fit(x[:300], y[:300])
    return merger.predict_proba(x[300:400])


@pytest.mark.parametrize("tamper", ["flip", "shuffle"])
def test_a_tampered_cache_gives_the_same_z_as_a_fresh_build(digits, tmp_path, capsys, fresh_build, tamper):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True)
    merger.cache_dir = tmp_path
    merger.fit(x[:300], y[:300])
    (path,) = tmp_path.glob("*" + feature_cache.SUFFIX)
    key = path.name[: -len(feature_cache.SUFFIX)]
    if tamper == "flip":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    else:  # the same features, rows shuffled, the entry rewritten consistently (accuracy 0.152 in the issue)
        rows = feature_cache.load(tmp_path, key, 300)
        feature_cache.store(tmp_path, key, rows[np.random.default_rng(0).permutation(300)])
    capsys.readouterr()
    merger.fit(x[:300], y[:300])
    err = capsys.readouterr().err
    assert f"feature cache entry {path}" in err and merger.report_["features_from_cache"] is False, err
    np.testing.assert_allclose(merger.predict_proba(x[300:400]), fresh_build, rtol=0, atol=1e-6)
    merger.fit(x[:300], y[:300])  # the rewritten entry is trusted again
    assert merger.report_["features_from_cache"] is True and capsys.readouterr().err == ""
