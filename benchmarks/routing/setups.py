"""The routing benchmarks' setups, pools and shared scoring (``pools``, ``bigpool``, ``subsample``, ``table``).

A setup is K teachers trained on their own classes only (``benchmarks.common.teacher``: PyTorch CNNs and
scikit-learn MLPs, alternating), an unlabeled pool drawn from a reserve of training images the teachers
never saw, shaped by the variant, and a test set from the test split (Fashion-MNIST t10k; for digits,
held-out scikit-learn digits). Tuning uses seeds 100+ and scores on a validation part of the training
reserve (``validation_cases``); reported rows use seeds 0.. and the test split.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.common import CLASSES, digits_28, merger, read_split, teacher
from onnxmerge.stages.results import teacher_space

C = CLASSES  # T-shirt_top 0, Trouser 1, Pullover 2, Dress 3, Coat 4, Sandal 5, Shirt 6, Sneaker 7, Bag 8, Ankle_boot 9
DIGITS = [f"digit_{d}" for d in range(10)]


def _pick(*idx: int) -> list[str]:
    return [C[i] for i in idx]


# interleaved: look-alike classes in different teachers; grouped: tops | shoes | the rest, as far as K allows
SETUPS = {
    "k2-interleaved": [_pick(0, 1, 2, 3, 4), _pick(5, 6, 7, 8, 9)],
    "k2-grouped": [_pick(0, 2, 3, 4, 6), _pick(1, 5, 7, 8, 9)],
    "k3-interleaved": [_pick(0, 1, 2, 3), _pick(4, 5, 6), _pick(7, 8, 9)],
    "k3-grouped": [_pick(0, 2, 4, 6), _pick(5, 7, 9), _pick(1, 3, 8)],
    "k4-interleaved": [_pick(0, 1, 2), _pick(3, 4, 5), _pick(6, 7), _pick(8, 9)],
    "k4-grouped": [_pick(0, 6), _pick(2, 4), _pick(5, 7, 9), _pick(1, 3, 8)],
    "k5-interleaved": [_pick(0, 1), _pick(2, 3), _pick(4, 5), _pick(6, 7), _pick(8, 9)],
    "k5-grouped": [_pick(0, 6), _pick(2, 4), _pick(5, 7), _pick(8, 9), _pick(1, 3)],
    "clothes+digits": [list(C), DIGITS],
    "clothes9+digits": [[c for c in C if c != "Bag"], DIGITS],  # Bag is the new class learned from 5 images
}
NEW_CLASS = {"clothes9+digits": "Bag"}  # setups with a class no teacher has: the "new class from k images" rows
VARIANTS = ["balanced", "minority10", "longtail", "missing2", "junk20", "n50", "n200", "n10000", "blur"]
RESERVE = 12000  # training images the teachers never see: pools are drawn from the first 10,000
VALIDATION = slice(10000, RESERVE)  # the tuning score's images (never the test split)
TEST = 2000
TRAIN_PER_CLASS = 1000  # within-task accuracy 0.87-0.97; half accuracy.modes' 2,000 to halve the training time


class Data:
    """Fashion-MNIST, scikit-learn digits (28x28), loaded once."""

    def __init__(self) -> None:
        self.xtr, self.ytr = read_split("train")
        self.xte, self.yte = read_split("t10k")
        from sklearn.datasets import load_digits

        self.digits = digits_28()
        self.ydigits = np.asarray(DIGITS)[load_digits().target]


def blur(x: np.ndarray) -> np.ndarray:
    """Gaussian blur (radius 1): the "other camera" shift."""
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(1))) for im in x])[
        ..., None
    ]


def framework(i: int, labels: list[str]) -> str:
    """Alternate PyTorch and scikit-learn; two-class teachers are PyTorch (skl2onnx writes a binary
    classifier's probabilities through a Concat that onnxmerge's head finder does not walk back through)."""
    return "torch" if i % 2 == 0 or len(labels) < 3 else "sklearn"


class Setup:
    """One setup and seed: its teachers (trained and exported once, cached), reserve, test set and junk."""

    def __init__(self, name: str, seed: int, data: Data, work: Path) -> None:
        self.name, self.seed, self.work = name, seed, work
        self.split = SETUPS[name]
        rng = np.random.default_rng(seed)
        union = [c for own in self.split for c in own]
        fashion = [c for c in union if c in C]
        pool_f = rng.permutation(np.flatnonzero(np.isin(data.ytr, fashion)))
        reserve_f, train_f = pool_f[:RESERVE], pool_f[RESERVE:]
        test_f = rng.choice(np.flatnonzero(np.isin(data.yte, fashion)), TEST, replace=False)
        x_res, y_res, x_test, y_test = data.xtr[reserve_f], data.ytr[reserve_f], data.xte[test_f], data.yte[test_f]
        x_train, y_train = data.xtr[train_f], data.ytr[train_f]
        digit_perm = rng.permutation(len(data.digits))
        if "digit_0" in union:  # digits: 900 train the teacher, 600 are pool candidates, the rest test
            tr, res, te = digit_perm[:900], digit_perm[900:1500], digit_perm[1500:]
            x_train, y_train = np.concatenate([x_train, data.digits[tr]]), np.concatenate([y_train, data.ydigits[tr]])
            x_res, y_res = np.concatenate([x_res, data.digits[res]]), np.concatenate([y_res, data.ydigits[res]])
            x_test, y_test = np.concatenate([x_test, data.digits[te]]), np.concatenate([y_test, data.ydigits[te]])
            self.junk = None  # no image source here that is none of clothes and digits
        else:
            self.junk = data.digits[digit_perm]
        self.x_res, self.y_res, self.x_test, self.y_test = x_res, y_res, x_test, y_test
        self.owner = self.owner_of(name)
        self.sources = self._teachers(x_train, y_train, rng)

    def _teachers(self, x: np.ndarray, y: np.ndarray, rng) -> list[dict]:
        def training(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
            counts = [min(TRAIN_PER_CLASS, int(np.sum(y == c))) for c in labels]
            pick = np.concatenate(
                [rng.choice(np.flatnonzero(y == c), n, replace=False) for c, n in zip(labels, counts)]
            )
            return x[pick], y[pick]

        sources = []
        for i, labels in enumerate(self.split):
            fw = framework(i, labels)
            path = self.work / f"{self.name}_seed{self.seed}_{i}_{fw}.onnx"
            sources.append(teacher(f"s{i}_{fw}", fw, labels, self.seed, path, lambda: training(labels)))
        return sources

    @staticmethod
    def owner_of(name: str) -> dict[str, int]:
        return {label: i for i, own in enumerate(SETUPS[name]) for label in own}

    def true_source(self, y: np.ndarray) -> np.ndarray:
        return np.asarray([self.owner.get(v, -1) for v in y])

    def pool(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """``(indices into the reserve, junk images)`` of the variant's pool."""
        rng = np.random.default_rng(10_000 + self.seed)
        candidates = np.arange(VALIDATION.start)
        if "digit_0" in self.owner:
            candidates = np.concatenate([candidates, np.arange(RESERVE, len(self.x_res))])
        y = self.y_res[candidates]
        labels = sorted(set(y))
        # a class has at most its reserve images: the digits setups' 10,000-image pool holds only their 600
        # digits (6% of it), so there n10000 is also a domain-imbalanced pool, not the balanced one grown
        n = {"n50": 50, "n200": 200, "n10000": 10000}.get(variant, 1000)
        share = np.ones(len(labels))
        if variant == "minority10":  # teacher 0's classes are 10% of the pool
            own = np.isin(labels, self.split[0])
            share = np.where(own, 0.1 / own.sum(), 0.9 / (~own).sum())
        elif variant == "longtail":  # class shares fall geometrically from 10 to 1, in a seeded order
            share = np.geomspace(10, 1, len(labels))[rng.permutation(len(labels))]
        elif variant == "missing2":
            share[rng.choice(len(labels), 2, replace=False)] = 0
        n_junk = int(0.2 * n) if variant == "junk20" else 0
        share = share / share.sum() * (n - n_junk)
        pick = []
        for label, count in zip(labels, share):
            mine = candidates[y == label]
            pick.append(rng.choice(mine, min(int(round(count)), len(mine)), replace=False))
        junk = self.junk[:n_junk] if n_junk else np.zeros((0, *self.x_res.shape[1:]), np.uint8)
        return rng.permutation(np.concatenate(pick)), junk


class Features:
    """A teachers-mode Merger without a pool, used for its stitched graph's outputs (feature-cached).

    ``generic``: a ``teacher = false`` source dict (``benchmarks.common.generic``) added to the setup's teachers;
    ``sources`` holds every source the head reads, the setup's teachers first."""

    def __init__(self, setup: Setup, cache: Path, generic: dict | None = None) -> None:
        self.setup = setup
        self.sources = setup.sources + ([generic] if generic else [])
        self.base = merger(self.sources, "teachers", cache).fit()
        self.teachers = teacher_space(self.base.sources_, self.base.teachers_)
        self.head_input = self.base.head_input_
        self.widths = self.head_input.widths(self.base.widths_)
        self.reserve = self.base.head_outputs(setup.x_res)
        self.test = self.base.head_outputs(setup.x_test)

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.base.head_outputs(x)


def take(outputs: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in outputs.items()}


def join(*outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def numpy_rows(
    feat: Features, pool_out: dict, true_pool: np.ndarray, route_fn, test_out: dict, y_test: np.ndarray, router_c=None
) -> dict[str, float]:
    """Route the pool with ``route_fn``, fit the router with the build's own ``stages.route.train_router``, score
    Z's head math in numpy. ``router_c``: the router's C (default the Merger's), or a function of the number of
    router targets. ``route_fn`` returns ``(targets, weight)``; the build weighs every pool target 1."""
    from onnxmerge.config import ROUTER_C
    from onnxmerge.graph.stitch import output_names
    from onnxmerge.learn.head import HeadInput, TeachersHead
    from onnxmerge.learn.routing import l2_blocks
    from onnxmerge.stages.route import train_router

    blocks = [pool_out[output_names(s["name"])["feature"]] for s in feat.sources]
    probs = [HeadInput.probabilities(pool_out, n, k) for n, k in feat.base.teachers_]
    start = time.perf_counter()
    targets, weight = route_fn(l2_blocks(blocks), feat.teachers, probs)
    assert np.all(weight == 1), "train_router weighs pool targets 1, as the build does"
    x_pool = feat.head_input.numpy(pool_out).astype(np.float64)
    keep = targets >= 0
    c = ROUTER_C if router_c is None else router_c(int(keep.sum())) if callable(router_c) else router_c
    router, _ = train_router(x_pool, targets, [], feat.widths, c, len(feat.teachers.names))
    seconds = time.perf_counter() - start
    union, route = TeachersHead(feat.head_input, feat.teachers, router).numpy(test_out)
    true_test = feat.setup.true_source(y_test)
    owned = true_pool >= 0
    return {
        "accuracy": float(np.mean(np.asarray(feat.teachers.union)[union.argmax(1)] == y_test)),
        "routing (test)": float(np.mean(route.argmax(1) == true_test)),
        "routing (pool targets)": float(np.mean(targets[owned] == true_pool[owned])),
        "junk kept": float(np.mean(keep[~owned])) if (~owned).any() else float("nan"),
        "seconds": seconds,
    }


def variant_pool(feat: Features, variant: str, validation: bool = False):
    """``(pool outputs, pool images, true source per pool image (-1 junk), test outputs, test labels)``."""
    setup = feat.setup
    idx, junk = setup.pool(variant)
    x_pool = np.concatenate([setup.x_res[idx], junk])
    true_pool = np.concatenate([setup.true_source(setup.y_res[idx]), np.full(len(junk), -1)])
    if validation:  # tuning: score on reserve images that are in no pool, never on the test split
        val = np.arange(VALIDATION.start, VALIDATION.stop)
        x_test, y_test = setup.x_res[val], setup.y_res[val]
    else:
        x_test, y_test = setup.x_test, setup.y_test
    if variant == "blur":
        x_pool, x_test = blur(x_pool), blur(x_test)
        return feat.outputs(x_pool), x_pool, true_pool, feat.outputs(x_test), x_test, y_test
    pool_out = join(take(feat.reserve, idx), feat.outputs(junk)) if len(junk) else take(feat.reserve, idx)
    test_out = take(feat.reserve, val) if validation else feat.test
    return pool_out, x_pool, true_pool, test_out, x_test, y_test


def validation_cases(cases: list[str], seed: int, work: Path):
    """For each ``"setup/variant"`` of ``cases``, the tuning protocol's data (validation images of the training
    reserve, never the test split): ``(case, feat, variant, pool_out, true_pool, test_out, y_test)``; each
    setup's teachers and features are loaded once."""
    data, feats = Data(), {}
    for case in cases:
        name, variant = case.split("/")
        if name not in feats:
            feats[name] = Features(Setup(name, seed, data, work), work / "cache")
        pool_out, _, true_pool, test_out, _, y_test = variant_pool(feats[name], variant, validation=True)
        yield case, feats[name], variant, pool_out, true_pool, test_out, y_test


def before(features, teachers, probs):
    """The routing before this issue, for comparison: majority source of every pool image, all router targets."""
    from onnxmerge.learn.routing import route_pool

    return route_pool(features, teachers, probs, per_label=1).source, np.ones(len(features))


# route_pool's parameters in the release before 4 clusters per label; the routing ideas and matchings
# numbers in RESULTS.md were measured against it
PREVIOUS_RELEASE = {"per_label": 1, "min_agreement": 0.7}


def previous_release(features, teachers, probs):
    """The routing of the release before 4 clusters per label: one per label, targets agreed by >= 0.7 of runs."""
    from onnxmerge.learn.routing import route_pool

    return route_pool(features, teachers, probs, **PREVIOUS_RELEASE).targets(), np.ones(len(features))
