"""Screenshots of the demo page for the README: a dialog built by clicking replies, in headless Chromium.

    .venv/bin/python scripts/demo_screenshots.py                      # the shipped model -> docs/images/
    .venv/bin/python scripts/demo_screenshots.py --bundle RUN/bundle --out /tmp/shots --picks 0,2

It serves the bundle on a free local port, types ``--opener``, clicks the replies ``--picks`` (0 is the
first) one after the other, points at a reply's latent code, and writes demo-first-turn.png (the replies to
the opener) and demo-conversation.png (the whole dialog). Needs the dev extra (selenium) and chromium with
chromedriver.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def serve(bundle: Path | None) -> Iterator[str]:
    from app.main import create_app
    from app.settings import Settings
    from harness.server import serve_in_thread

    with serve_in_thread(create_app(Settings(bundle=bundle, torch_threads=1, api_key=None))) as url:
        yield url


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        raise SystemExit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def shoot(browser, path: Path, width: int = 1200) -> None:
    """The whole page, as tall as its content."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, height + 140)  # the window's frame takes some of its height
    time.sleep(0.3)
    browser.save_screenshot(str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder for the PNG files")
    p.add_argument("--opener", default="Hi! Do you have any plans for the weekend?", help="the first turn, typed")
    p.add_argument("--seed", default="9007199254740993", help="seed for every turn (digits; past 2^53 on purpose)")
    p.add_argument("--picks", default="0,1,0", help="which reply to click at each turn, comma-separated, 0 first")
    p.add_argument("--n", type=int, default=5, help="replies per turn")
    args = p.parse_args(argv)
    picks = [int(x) for x in args.picks.split(",") if x.strip()]
    if any(k < 0 or k >= args.n for k in picks):
        p.error(f"--picks must be between 0 and n - 1 = {args.n - 1}")

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    args.out.mkdir(parents=True, exist_ok=True)
    with serve(args.bundle) as url:
        browser = chromium()
        try:
            browser.get(url + "/")

            def wait_answer() -> None:
                # the page marks itself busy in the click's own handler, so this waits for that request
                WebDriverWait(browser, 60).until(lambda d: not d.execute_script(
                    "return document.body.classList.contains('busy')")
                    and (d.find_element(By.ID, "error").is_displayed()
                         or " · seed " in d.find_element(By.ID, "status").text))
                if browser.find_element(By.ID, "error").is_displayed():
                    raise SystemExit(browser.find_element(By.ID, "error").text)

            browser.find_element(By.CSS_SELECTOR, "#options summary").click()
            for field, value in (("n", str(args.n)), ("seed", args.seed)):
                browser.find_element(By.ID, field).clear()
                browser.find_element(By.ID, field).send_keys(value)
            browser.find_element(By.CSS_SELECTOR, "#options summary").click()
            browser.find_element(By.ID, "context").send_keys(args.opener, Keys.ENTER)
            wait_answer()
            shots = []

            def point_at(k: int) -> None:
                marker = browser.find_elements(By.CSS_SELECTOR, f'#latent-plot .point[data-reply="{k + 1}"] .marker')
                if marker:
                    ActionChains(browser).move_to_element(marker[0]).perform()

            browser.execute_script("document.activeElement.blur()")
            point_at(0)
            shots.append(args.out / "demo-first-turn.png")
            shoot(browser, shots[-1])
            browser.set_window_size(1200, 900)
            for k in picks:
                choices = browser.find_elements(By.CSS_SELECTOR, "#replies button.choice")
                if k >= len(choices):
                    raise SystemExit(f"only {len(choices)} replies at this turn: pick another")
                choices[k].click()
                wait_answer()
            browser.execute_script("document.activeElement.blur()")
            point_at(1)
            shots.append(args.out / "demo-conversation.png")
            shoot(browser, shots[-1])
        finally:
            browser.quit()
    for s in shots:
        print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
