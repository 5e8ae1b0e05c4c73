"""Screenshots of what a person sees on opening TensorBoard: the Time Series and HParams pages.

Starts `tensorboard --logdir DIR` on 127.0.0.1 (a free port), waits until it has read the log
directory, opens both pages in headless Chromium through Playwright, waits until the charts are
drawn (a chart's canvas holds coloured pixels; headless charts stay blank when taken too early)
and the HParams table has its rows, saves PNGs, and stops the server.

    apt-get install -y chromium; .venv/bin/pip install -e ".[screenshots]"   # Playwright
    .venv/bin/python scripts/tb_screenshots.py /tmp/tb/run docs/images --name tb-run
    .venv/bin/python scripts/tb_screenshots.py /tmp/tb/pop out --select 'Best|Median|Worst'

`--select REGEX` also takes a third picture after typing REGEX into the run filter and ticking
the runs it leaves (what a reader does when a log folder holds more runs than TensorBoard
selects by default). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-gpu-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def start_tensorboard(logdir: Path, port: int, log: IO[bytes]) -> subprocess.Popen:
    """`tensorboard --logdir DIR`, reachable from this machine only, its output to `log`."""
    exe = Path(sys.executable).with_name("tensorboard")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]
    command += ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop(server: subprocess.Popen) -> None:
    """End the server this script started (and only it)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_loaded(base: str, server: subprocess.Popen, timeout: float) -> list[str]:
    """Poll until the server answers and its run list stops growing (the first load is done)."""
    deadline = time.monotonic() + timeout
    runs: list[str] = []
    stable_since = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tensorboard exited with {server.returncode}")
        try:
            now = get_json(f"{base}/data/runs")
        except OSError:
            time.sleep(0.5)
            continue
        if now and now == runs:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 3:
                return runs
        else:
            runs, stable_since = list(now), None
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard did not finish loading within {timeout:.0f} s")


def drawn(png: bytes) -> bool:
    """Whether a chart canvas holds ink: dark or coloured pixels (its grid is light grey)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    ink = sum(
        count
        for count, (r, g, b) in image.getcolors(1 << 24) or []
        if max(r, g, b) - min(r, g, b) > 60 or r + g + b < 3 * 140
    )
    return ink > 30


def chart_boxes(page) -> list[dict]:
    """The on-screen boxes of the line charts' canvases (found without scrolling)."""
    height = page.viewport_size["height"]
    boxes = []
    for canvas in page.locator("scalar-card line-chart .series-view canvas").all():
        box = canvas.bounding_box()
        if box and box["width"] > 10 and box["y"] >= 0 and box["y"] + box["height"] <= height:
            boxes.append(box)
    return boxes


def wait_for_charts(page, timeout: float) -> int:
    """Wait until every line chart on screen shows a line; returns how many were checked
    (-1: some stayed blank until the timeout)."""
    from PIL import Image

    deadline = time.monotonic() + timeout
    page.wait_for_selector("metrics-main-view", timeout=timeout * 1000)
    while time.monotonic() < deadline:
        page.wait_for_timeout(1000)
        if page.locator("mat-spinner, mat-progress-bar").count():
            continue
        boxes = chart_boxes(page)
        ticked = page.locator(
            "runs-data-table tb-data-table-content-row input[type=checkbox]:checked"
        ).count()
        if not boxes or not ticked:  # no chart open or no run selected: blank is the truth
            return 0
        shot = Image.open(io.BytesIO(page.screenshot()))
        crops = []
        for box in boxes:
            left, top = int(box["x"]), int(box["y"])
            crop = shot.crop((left, top, left + int(box["width"]), top + int(box["height"])))
            out = io.BytesIO()
            crop.save(out, format="PNG")
            crops.append(out.getvalue())
        if all(drawn(c) for c in crops):
            page.wait_for_timeout(500)
            return len(boxes)
    return -1


def wait_for_hparams(page, timeout: float) -> bool:
    """Wait until the HParams table view lists session groups (its cells hold values)."""
    page.wait_for_selector("tf-hparams-table-view", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cells = page.locator("tf-hparams-table-view vaadin-grid-cell-content").all_inner_texts()
        if any(any(c.isdigit() for c in text) for text in cells):
            page.wait_for_timeout(1500)
            return True
        page.wait_for_timeout(500)
    return False


def small_png(png: bytes, path: Path, colours: int = 128) -> None:
    """Save a screenshot as a palette PNG (a few hundred KB at most)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("out", type=Path, help="folder for the PNGs")
    parser.add_argument("--name", default=None, help="file name prefix (default: the logdir's)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--hparams-width", type=int, default=1800)
    parser.add_argument("--select", default=None, help="run filter regex for a third picture")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    if not args.logdir.is_dir():
        parser.error(f"no such directory: {args.logdir}")
    if not os.path.exists(CHROMIUM):
        parser.error(f"{CHROMIUM} is missing: apt-get install -y chromium")
    name = args.name or args.logdir.name
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"tb_screenshots-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until it is stopped
    server = start_tensorboard(args.logdir, port, log)
    written = []
    try:
        runs = wait_until_loaded(base, server, args.timeout)
        print(f"{name}: tensorboard on {base}, {len(runs)} runs")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})

            page.goto(f"{base}/#timeseries")
            checked = wait_for_charts(page, args.timeout)
            print(f"{name}: time series, {checked} drawn charts on screen")
            small_png(page.screenshot(), args.out / f"{name}-timeseries.png")
            written.append(f"{name}-timeseries.png")

            if args.select:
                search = page.locator('input[placeholder="Filter runs (regex)"]')
                search.click()
                search.press_sequentially(args.select, delay=20)  # it filters on key events
                page.wait_for_timeout(1500)
                rows = page.locator("runs-data-table tb-data-table-content-row").count()
                print(f"{name}: {rows} runs match {args.select!r}")
                # the header's box ticks every run the filter leaves
                page.locator("runs-data-table tb-data-table-header-cell mat-checkbox").first.click()
                checked = wait_for_charts(page, args.timeout)
                print(f"{name}: ticked, {checked} drawn charts")
                small_png(page.screenshot(), args.out / f"{name}-selected.png")
                written.append(f"{name}-selected.png")

            # the HParams table is wide: a wider window shows the first metric columns too
            page.set_viewport_size({"width": args.hparams_width, "height": args.height})
            page.goto(f"{base}/#hparams")
            rows = wait_for_hparams(page, args.timeout)
            print(f"{name}: hparams, {'rows shown' if rows else 'no rows'}")
            small_png(page.screenshot(), args.out / f"{name}-hparams.png")
            written.append(f"{name}-hparams.png")
            browser.close()
    except BaseException:
        print(f"tensorboard's output: {log_path}", file=sys.stderr)
        raise
    finally:
        stop(server)
        log.close()
    log_path.unlink()
    for file in written:
        size = (args.out / file).stat().st_size
        print(f"wrote {args.out / file} ({size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
