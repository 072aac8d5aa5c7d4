"""`onnxmerge label DIR`: the labelling page, end to end in headless Chromium (Debian's chromium, driven by
Playwright), with every request the browser makes recorded: none may leave 127.0.0.1."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from onnxmerge.files.labelling import Suggestion, write_suggestions
from onnxmerge.label import LabelServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion" / "data" / "test.npz"
CHROMIUM = "/usr/bin/chromium"
CLASSES = ["Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker", "T-shirt_top", "Trouser"]


def browser_or_skip():
    """Playwright's sync API, or a skip naming what is missing (CI installs both: .ci/run, the test extra)."""
    missing = None if os.path.exists(CHROMIUM) else f"Debian's chromium ({CHROMIUM}; apt-get install chromium)"
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing = "playwright (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {missing}")
        pytest.skip(f"needs {missing}")
    return sync_playwright, expect


@pytest.fixture
def folder(tmp_path):
    """A labelling folder as `suggest` leaves it: 34 Fashion-MNIST test images waiting, Z's guesses in the CSV
    (right for most, a few wrong)."""
    data = np.load(EXAMPLE)
    x, y = data["x"], data["y"].astype(str)
    pick = np.random.default_rng(0).choice(np.flatnonzero(np.isin(y, CLASSES)), 34, replace=False)
    rows, truth = [], {}
    for n, i in enumerate(pick):
        name = f"img{i:04d}.png"
        Image.fromarray(x[i, ..., 0]).save(tmp_path / name)
        truth[name] = (y[i], x[i, ..., 0])
        guess = y[i] if n % 4 else CLASSES[(CLASSES.index(y[i]) + 1) % len(CLASSES)]
        p = {c: (0.7 if c == guess else 0.3 / (len(CLASSES) - 1)) for c in CLASSES}
        rows.append(Suggestion(name, f"pool/{name}", guess, 0.7, p))
    write_suggestions(tmp_path, CLASSES, rows)
    return tmp_path, rows, truth


@pytest.fixture
def server(folder):
    server = LabelServer(folder[0], 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_thirty_images_labelled_in_headless_chromium_without_leaving_localhost(folder, server):
    sync_playwright, expect = browser_or_skip()
    path, rows, truth = folder
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server.url)
            expected = {}
            for n, row in enumerate(rows[:32]):
                expect(page.locator("#image")).to_have_attribute("data-file", row.file)
                if n == 0:
                    check_screenshot(page, truth[row.file][1], row.guess)
                true = truth[row.file][0]
                if n == 30:
                    page.keyboard.press("n")  # none of these
                    expected[row.file] = ".none"
                elif n == 31:
                    page.keyboard.press("s")  # skip
                    expected[row.file] = ".skipped"
                elif true == row.guess and n % 3:
                    page.keyboard.press("Enter")  # the guess is pre-selected
                    expected[row.file] = true
                elif n % 3:
                    page.keyboard.press("1234567890"[CLASSES.index(true)])  # its shortcut
                    expected[row.file] = true
                else:
                    page.click(f"#classes button[data-label='{true}']")
                    expected[row.file] = true
                expect(page.locator("#progress")).to_contain_text(f"{n + 1} answered")
            page.keyboard.press("z")  # undo the skip: the image waits again, first
            expect(page.locator("#image")).to_have_attribute("data-file", rows[31].file)
            expected.pop(rows[31].file)
            expect(page.locator("#progress")).to_contain_text("31 answered, 3 waiting")
        finally:
            browser.close()
    for file, label in expected.items():
        assert (path / label / file).is_file() and not (path / file).exists(), (file, label)
    assert sorted(p.name for p in path.iterdir() if p.suffix == ".png") == sorted(r.file for r in rows[31:])
    assert len([p for p in path.glob("[!.]*/*.png")]) == 30  # 30 labelled into class folders
    hosts = {urlsplit(url).hostname for url in requests}
    assert hosts == {"127.0.0.1"}, hosts
    assert len(requests) >= 60  # the page, its state, every image and every answer


def check_screenshot(page, pixels: np.ndarray, guess: str) -> None:
    """The image shown is the waiting image itself, large; the guess's button is the one highlighted."""
    shot = Image.open(io.BytesIO(page.locator("#image").screenshot())).convert("L")
    assert min(shot.size) >= 300  # shown large, not at its 28 pixels
    shown = np.asarray(shot.resize((28, 28), Image.Resampling.BOX), np.float64)
    assert np.abs(shown - pixels).mean() < 12
    page_shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    box = page.locator(f"#classes button[data-label='{guess}']").bounding_box()
    inside = np.asarray(page_shot)[int(box["y"] + 4), int(box["x"] + box["width"] / 2)]
    assert tuple(inside) == (0xE8, 0xF0, 0xFC)  # the highlighted button's background
    assert page.locator("#classes button").count() == len(CLASSES)


def request(server, method: str, path: str, body: bytes | None = None, **headers) -> tuple[int, bytes]:
    port = server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers.setdefault("Host", f"127.0.0.1:{port}")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def test_the_server_answers_only_its_own_page(folder, server):
    path, rows, _ = folder
    status, body = request(server, "GET", "/")
    assert status == 200 and b"<script>" in body and b"http" not in body.split(b"<script>")[0].lower()
    assert request(server, "GET", "/", Host="attacker.example:80")[0] == 403  # DNS rebinding
    assert request(server, "GET", "/image?file=../suggestions.csv")[0] == 404
    assert request(server, "GET", "/image?file=" + rows[0].file)[0] == 200
    answer = json.dumps({"file": rows[0].file, "label": "Coat"}).encode()
    assert request(server, "POST", "/answer", answer, **{"Content-Type": "text/plain"})[0] == 415  # a form post
    cross = {"Content-Type": "application/json", "Origin": "http://attacker.example"}
    assert request(server, "POST", "/answer", answer, **cross)[0] == 403
    bad = json.dumps({"file": rows[0].file, "label": "../../etc"}).encode()
    status, body = request(server, "POST", "/answer", bad, **{"Content-Type": "application/json"})
    assert status == 400 and "not a class" in json.loads(body)["error"]
    assert (path / rows[0].file).exists()
    status, body = request(server, "POST", "/answer", answer, **{"Content-Type": "application/json"})
    assert status == 200 and (path / "Coat" / rows[0].file).is_file() and json.loads(body)["answered"] == 1


def test_label_refuses_a_folder_without_suggestions(tmp_path, capsys):
    from onnxmerge.cli import main

    shutil.copy(EXAMPLE, tmp_path / "x.npz")
    assert main(["label", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "run onnxmerge suggest" in err and len(err.strip().splitlines()) == 1
