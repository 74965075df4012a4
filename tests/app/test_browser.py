"""The demo page in a real headless Chromium: type a dialog, submit, see n replies with scores."""
from __future__ import annotations

import shutil
import socket
import threading

import pytest

from tests.app.conftest import wait_url_ready

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def server(make_settings):
    import uvicorn

    from app.main import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(make_settings(port=port))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_url_ready(url, timeout=20)
    yield url
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_demo_page_shows_n_replies(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server + "/")
    assert "cvae-dialog" in browser.title
    browser.find_element(By.ID, "context").send_keys("Hi there!\nHello, how are you?")
    n = browser.find_element(By.ID, "n")
    n.clear()
    n.send_keys("4")
    Select(browser.find_element(By.ID, "strategy")).select_by_value("sample")
    browser.find_element(By.ID, "seed").send_keys("11")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#replies li.reply")) == 4)
    replies = browser.find_elements(By.CSS_SELECTOR, "#replies li.reply")
    assert all(float(li.find_element(By.CLASS_NAME, "score").text) < 0 for li in replies)
    assert all(li.find_element(By.CLASS_NAME, "text").text for li in replies)
    seeds = [li.find_element(By.CLASS_NAME, "seed").text for li in replies]
    assert all(s.startswith("seed ") and int(s[5:]) >= 11 for s in seeds), seeds
    WebDriverWait(browser, 5).until(EC.text_to_be_present_in_element((By.ID, "status"), "seed 11"))
    assert "4 of 4 replies" in browser.find_element(By.ID, "status").text


def test_demo_page_keeps_19_digit_seeds_exact(server, browser):
    """Seeds go up to 2^63 - 2, beyond what a JavaScript number holds exactly: the page sends and shows
    the digits as typed (a number would turn ...806 into ...808)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    seed = "9223372036854775806"
    browser.get(server + "/")
    browser.find_element(By.ID, "context").send_keys("Hello, how are you?")
    browser.find_element(By.ID, "seed").send_keys(seed)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(EC.text_to_be_present_in_element((By.ID, "status"), "seed"))
    assert f"seed {seed} " in browser.find_element(By.ID, "status").text
    shown = {li.text for li in browser.find_elements(By.CSS_SELECTOR, "#replies .seed")}
    assert shown and all(int(s.removeprefix("seed ")) < 2**63 - 1 for s in shown)
    browser.find_element(By.ID, "seed").clear()
    browser.find_element(By.ID, "seed").send_keys("-5")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 5).until(EC.text_to_be_present_in_element((By.ID, "status"), "whole number"))


def test_demo_page_shows_errors(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    browser.find_element(By.ID, "context").send_keys("x" * 1001)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(EC.text_to_be_present_in_element((By.ID, "status"), "Error"))
    assert "1000 characters" in browser.find_element(By.ID, "status").text


def test_docs_page_renders_offline(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/docs")
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert "/respond" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui").text
