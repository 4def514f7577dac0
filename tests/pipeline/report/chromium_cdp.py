"""Open a page in headless Chromium over the DevTools protocol and report what the browser saw.

Used by the report tests: console messages, uncaught exceptions, log entries (failed loads, CSP
violations), every network request, values computed in the page, and a full-page screenshot.
The websocket client is aiohttp's (installed with ray[default]). Everything is bounded by timeouts.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    """One headless Chromium process; ``open(url, script)`` loads a page and returns what happened."""

    def __init__(self, binary: str, width: int = 1280):
        self.profile = tempfile.mkdtemp(prefix="winnow-chromium-")
        self.width = width
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},900", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort within 30 s)")
            time.sleep(0.1)
        self.port = int(open(port_file).read().split()[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this Popen created: chromium and its helpers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str, script: str = "null", timeout: float = 30.0) -> dict:
        return asyncio.run(asyncio.wait_for(self._open(url, script), timeout))

    async def _open(self, url: str, script: str) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = _Page(ws)
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await page.call(f"{domain}.enable")
                await page.call("Page.navigate", url=url)
                await page.wait_event("Page.loadEventFired")
                value = (await page.call("Runtime.evaluate", expression=script, returnByValue=True))
                height = (await page.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                                          returnByValue=True))["result"]["value"]
                shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                       clip={"x": 0, "y": 0, "width": self.width, "height": min(height, 12000),
                                             "scale": 1})
                await page.call("Page.close")
        events = page.events
        return {
            "value": value["result"].get("value"),
            "exception": value.get("exceptionDetails"),
            "console": [e["params"] for e in events if e["method"] == "Runtime.consoleAPICalled"],
            "exceptions": [e["params"] for e in events if e["method"] == "Runtime.exceptionThrown"],
            "log": [e["params"]["entry"] for e in events if e["method"] == "Log.entryAdded"],
            "requests": [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"],
            "failed": [e["params"] for e in events if e["method"] == "Network.loadingFailed"],
            "screenshot": base64.b64decode(shot["data"]),
        }


class _Page:
    """Request/response over one websocket, keeping every event that arrives meanwhile."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    async def wait_event(self, method: str) -> dict:
        for e in self.events:
            if e["method"] == method:
                return e
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg


def problems(result: dict) -> list[str]:
    """Everything that counts as a console error: errors/warnings logged, exceptions, failed or remote loads."""
    out = [f"console.{c['type']}: {c.get('args')}" for c in result["console"]
           if c["type"] in ("error", "warning", "assert")]
    out += [f"exception: {e['exceptionDetails'].get('text')}" for e in result["exceptions"]]
    out += [f"log {e['level']}: {e.get('text')} {e.get('url', '')}" for e in result["log"]
            if e["level"] in ("error", "warning")]
    out += [f"failed load: {f.get('errorText')}" for f in result["failed"]]
    out += [f"network request: {u}" for u in result["requests"] if not u.startswith(("file:", "data:", "about:"))]
    return out
