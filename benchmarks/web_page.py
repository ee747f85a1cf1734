"""The in-browser page (`dermalens export --web`): its size, and the time to the first prediction.

Writes the page for a model, then opens it in headless Chromium, once from a
static server on loopback and once from disk (file://), each time in a new
browser profile (nothing cached): the time from navigation until the model
is ready, and until the first uploaded photo's probabilities are shown.
Then the time of each further prediction (decode, resize, four flip views
through the model, softmax). Sizes: what the browser loads from a host, and
from disk (the base64 copies instead of model.onnx and the .wasm).

    python benchmarks/web_page.py --model runs/x/checkpoints/best.ckpt --image lesion.jpg

Needs Chromium (scripts/install_browser.sh) and ONNX Runtime Web (scripts/install_web_runtime.sh).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import publish_result  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def measure(browser, url: str, image: Path, repeats: int) -> dict:
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=300_000)
        ready = time.perf_counter() - start
        page.set_input_files("#file-input", str(image))
        expect(page.locator("#bars")).to_have_attribute("data-image", image.name, timeout=300_000)
        first = time.perf_counter() - start
        each = []
        for index in range(repeats):
            named = Path(tempfile.mkdtemp()) / f"{index}-{image.name}"
            named.write_bytes(image.read_bytes())
            began = time.perf_counter()
            page.set_input_files("#file-input", str(named))
            expect(page.locator("#bars")).to_have_attribute("data-image", named.name, timeout=300_000)
            each.append(time.perf_counter() - began)
        return {"model_ready_s": round(ready, 3), "first_prediction_s": round(first, 3),
                "page_model_ready_s": round(float(page.locator("body").get_attribute("data-model-ready-ms")) / 1e3, 3),
                "next_prediction_ms_median": round(1e3 * statistics.median(each), 1) if each else None}
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint, package folder or .onnx")
    parser.add_argument("--image", required=True, help="a photo to upload")
    parser.add_argument("--repeats", type=int, default=5, help="further predictions timed after the first")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/web_page.json)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from dermalens.inference.web_export import write_web_bundle

    folder = Path(tempfile.mkdtemp(prefix="dermalens-web-")) / "page"
    started = time.perf_counter()
    bundle = write_web_bundle(args.model, folder)
    written = time.perf_counter() - started
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                for how, url, size in (("static server", f"http://127.0.0.1:{server.server_port}/index.html",
                                        bundle.served_bytes),
                                       ("from disk (file://)", (folder / "index.html").as_uri(), bundle.file_bytes)):
                    rows.append({"opened": how, "page_mb": round(size / 1e6, 2),
                                 **measure(browser, url, Path(args.image), args.repeats)})
            finally:
                browser.close()
    finally:
        server.shutdown()
    record = bundle.record
    settings = {"model": Path(args.model).name, "network": record["model"]["name"],
                "input_px": record["preprocessing"]["image_size"], "tta_views": len(record["tta"]["views"]),
                "model_onnx_mb": round(bundle.sizes["model.onnx"] / 1e6, 2), "image": Path(args.image).name,
                "onnxruntime_web": record["runtime"]["version"], "bundle_written_s": round(written, 1),
                "bundle_on_disk_mb": round(sum(bundle.sizes.values()) / 1e6, 2), "threads": 1}
    publish_result("web_page", rows, settings, notes=[
        "page_mb: bytes the browser loads (static server: model.onnx + .wasm + scripts; file://: their base64 "
        "copies instead); one WebAssembly thread (threads need a cross-origin-isolated page)"], out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
