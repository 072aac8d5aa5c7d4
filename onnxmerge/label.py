"""``onnxmerge label DIR``: a labelling page for a ``suggest`` folder, served on 127.0.0.1 only.

Standard library ``http.server``; the page (``label.html``) is one self-contained file, and its
Content-Security-Policy lets it load nothing from anywhere but this server. Each answer moves the image
into ``DIR/<label>/`` (``files.labelling``), so the folder is a labelled one whatever moment the page stops.
Requests naming another host (DNS rebinding) and cross-origin posts are refused.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .errors import OnnxMergeError
from .files.labelling import NONE, SKIPPED, SUGGESTIONS, answer_folder, move_answer, move_back, read_suggestions
from .files.labelling import waiting as waiting_files
from .safety import printable

HOST = "127.0.0.1"
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; img-src 'self'; connect-src 'self'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class LabelFolder:
    """The folder being labelled: its classes, the images waiting, and the answers given (for undo)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise OnnxMergeError(f"{printable(folder)} is not a folder; give the folder onnxmerge suggest -o wrote.")
        self.folder = folder
        self.lock = threading.Lock()
        self.history: list[Path] = []  # where each answer moved its file, last answer last
        classes, rows = read_suggestions(folder)
        folders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = list(dict.fromkeys([*classes, *(r.guess for r in rows if r.guess), *folders]))
        if not self.classes:
            raise OnnxMergeError(
                f"{printable(folder)} has no {SUGGESTIONS} and no class folders, so the page knows no class to "
                f"offer; run onnxmerge suggest RECIPE.toml -n N -o {printable(folder)} first."
            )
        for label in self.classes:
            answer_folder(label)  # each class must be a usable folder name
        self.rows = {r.file: r for r in rows}

    def state(self) -> dict:
        """What the page shows: the classes, the images waiting (suggestion order) and the answers so far."""
        waiting = set(waiting_files(self.folder))
        order = [f for f in self.rows if f in waiting] + sorted(waiting - set(self.rows))
        items = []
        for file in order:
            row = self.rows.get(file)
            items.append(
                {
                    "file": file,
                    "guess": row.guess if row else None,
                    "confidence": row.confidence if row else None,
                    "probabilities": row.probabilities if row else {},
                }
            )
        return {"folder": str(self.folder), "classes": self.classes, "items": items, "answered": len(self.history)}

    def answer(self, file: str, label: str) -> dict:
        """Move ``file`` into the answer's folder: a class, ``.none`` ("none of these") or ``.skipped``."""
        if label not in self.classes and label not in (NONE, SKIPPED):
            raise OnnxMergeError(f"{printable(label)!r} is not a class of this folder.")
        with self.lock:
            self.history.append(move_answer(self.folder, file, label))
        return self.state()

    def undo(self) -> dict:
        """Put the last answered image back at the top level."""
        with self.lock:
            if self.history:
                move_back(self.folder, self.history.pop())
        return self.state()


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer

    def log_message(self, format: str, *args) -> None:  # no access log on the terminal
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in SECURITY.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: dict, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _allowed(self) -> bool:
        """Only requests for this server's own address: a page elsewhere cannot reach it under another name."""
        port = self.server.server_address[1]
        if self.headers.get("Host") not in (f"{HOST}:{port}", f"localhost:{port}"):
            self._send(403, b"forbidden host", "text/plain")
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (f"http://{HOST}:{port}", f"http://localhost:{port}"):
            self._send(403, b"forbidden origin", "text/plain")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if not self._allowed():
            return
        url = urlsplit(self.path)
        if url.path == "/":
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/state":
            self._json(self.server.labels.state())
        elif url.path == "/image":
            self._image(parse_qs(url.query).get("file", [""])[0])
        else:
            self._send(404, b"not found", "text/plain")

    def _image(self, file: str) -> None:
        if file not in waiting_files(self.server.labels.folder):  # only a waiting image: no path escapes DIR
            self._send(404, b"not a waiting image", "text/plain")
            return
        kind = mimetypes.guess_type(file)[0] or "application/octet-stream"
        self._send(200, (self.server.labels.folder / file).read_bytes(), kind)

    def do_POST(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        if self.headers.get("Content-Type") != "application/json":  # a form post from another page is refused
            self._send(415, b"application/json only", "text/plain")
            return
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 16)) or b"{}")
            if self.path == "/answer":
                self._json(self.server.labels.answer(str(body["file"]), str(body["label"])))
            elif self.path == "/undo":
                self._json(self.server.labels.undo())
            else:
                self._send(404, b"not found", "text/plain")
        except (OnnxMergeError, KeyError, ValueError, OSError) as exc:
            self._json({"error": printable(str(exc))}, 400)


class LabelServer(ThreadingHTTPServer):
    """The page's HTTP server, bound to 127.0.0.1 (``port`` 0: any free port; ``url`` says which)."""

    daemon_threads = True

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.labels = LabelFolder(folder)
        self.page = resources.files("onnxmerge").joinpath("label.html").read_bytes()
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            raise OnnxMergeError(
                f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); give another --port (0 picks a free one)."
            ) from exc

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


def serve(folder: Path, port: int = 0, announce: Callable[[str], None] = print) -> None:
    """Serve the labelling page for ``folder`` until Ctrl-C (or SIGTERM); every answer is on disk at once."""
    with LabelServer(folder, port) as server:
        state = server.labels.state()
        announce(f"labelling {len(state['items'])} images of {printable(folder)} at {server.url}  (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # the way to stop it (onnxmerge.signals turns SIGTERM into this too)
            pass
        left = len(server.labels.state()["items"])
        announce(f"stopped: {len(server.labels.history)} answered, {left} still waiting in {printable(folder)}")
