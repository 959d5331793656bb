"""Screenshot of `vae explore` for docs/explore.md, taken by headless chromium.

    VAE_HOME=... PYTHONPATH=src python scripts/explore_screenshot.py --run fm --out docs/images/explore.png

Needs selenium and Debian's chromium + chromium-driver. Starts the explorer on an ephemeral
loopback port, starts from a test image (fixed seed), focuses the top dimension, screenshots.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from vaecli.explore import Explorer, make_server

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--force-device-scale-factor=1")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--out", default="docs/images/explore.png")
    ap.add_argument("--seed", type=int, default=3, help="which test image (seed of /api/random)")
    ap.add_argument("--nudge", type=float, default=1.2, help="value given to the top dimension")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args()

    server = make_server(Explorer(args.run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for f in FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.add_argument(f"--window-size={args.width},900")
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            driver.get(server.url)
            wait = WebDriverWait(driver, 120)
            wait.until(lambda d: d.execute_script("return document.getElementById('strip').dataset.seq !== '0'"))
            driver.execute_script(
                "const [seed, nudge] = arguments;"
                "api('/api/random?' + q('&seed=' + seed)).then((r) => {"
                "  showSource(r.input, r.label_name, 'test image #' + r.index + ' \u00b7 posterior mean');"
                "  const top = S.info.order[0]; r.z[top] = nudge; setZ(r.z); setFocus(top); });",
                args.seed,
                args.nudge,
            )
            wait.until(lambda d: d.find_element("id", "input").is_displayed())
            time.sleep(1.5)  # let the debounced decode and strip requests finish
            wait.until(lambda d: d.execute_script("return document.getElementById('status').className === ''"))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
            time.sleep(0.5)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
            server.shutdown()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
