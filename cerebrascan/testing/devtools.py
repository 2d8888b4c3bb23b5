"""Headless Chromium driven over the Chrome DevTools Protocol, and a loopback ASGI server.

Used by the viewer tests and ``benchmarks/bench_views.py``: Debian's ``chromium`` renders WebGL
through SwiftShader (``--use-angle=swiftshader``), so no GPU or display is needed. Test and
benchmark support only; never imported by serving code.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import uvicorn
import websocket
from PIL import Image

from cerebrascan.testing.server_process import stop_process

CHROMIUM_FLAGS = (
    "--headless=new",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-sandbox",  # CI runs as root
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    """Debian's chromium, or None if it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal Chrome DevTools Protocol client on one page's websocket."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        # no Origin header: Chromium refuses DevTools connections from an unlisted origin
        self.socket = websocket.create_connection(url, timeout=timeout_s, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 120.0) -> Any:
        """Poll ``expression`` until it is truthy; its value.

        Raises:
            TimeoutError: it stayed falsy for ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed false for {timeout_s} s")

    def open(self, url: str) -> None:
        """Navigate and wait for the document to load."""
        self.call("Page.navigate", url=url)
        # the old document may still answer right after the command: wait for the new one
        target = json.dumps(url.split("#")[0])
        self.wait_for(
            f"location.href.split('#')[0] === {target} && document.readyState === 'complete'", 60
        )

    def screenshot(self) -> npt.NDArray[np.uint8]:
        """The page as RGB pixels."""
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def element_pixels(self, element_id: str) -> npt.NDArray[np.uint8]:
        """The pixels of the element with id ``element_id`` in a fresh screenshot."""
        box = self.evaluate(
            f"(() => {{ const r = document.getElementById({json.dumps(element_id)})"
            ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
        )
        left, top, width, height = (round(v) for v in box)
        return self.screenshot()[top : top + height, left : left + width]


@contextmanager
def headless_chromium(width: int = 1100, height: int = 700) -> Iterator[DevTools]:
    """A headless Chromium with a fresh profile; its first page's DevTools client.

    Raises:
        RuntimeError: chromium is not installed or opened no DevTools port.
    """
    chromium = chromium_path()
    if chromium is None:
        raise RuntimeError("Debian's chromium is not installed: run `make chromium` as root")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--window-size={width},{height}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.is_file() or not port_file.read_text().strip():
                if process.poll() is not None:
                    raise RuntimeError("chromium exited at start")
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium opened no DevTools port in 60 s")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            tools = DevTools(pages[0]["webSocketDebuggerUrl"])
            tools.call("Page.enable")
            try:
                yield tools
            finally:
                tools.socket.close()
        finally:
            stop_process(process, timeout_s=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def loopback_server(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1 in a thread; its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
