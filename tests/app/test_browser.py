"""The demo page in a real headless Chromium: a dialog built turn by turn by clicking replies, the latent
picture beside them, exact seeds, undo and start over, the keyboard, an API key and errors."""
from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
BIG_SEED = 2**53 + 1  # reply seeds from it (seed + i) pass 2^53: half of them have no exact double

# Keeps the text of every /respond request and answer as sent and received (JSON.parse would round the
# seeds; Python's json does not), so the test compares the page with what the API really returned.
RECORD_FETCH = """
window.__sent = []; window.__answers = [];
const fetch0 = window.fetch;
window.fetch = async (url, opts) => {
  const r = await fetch0(url, opts);
  if (String(url).endsWith('/respond')) { window.__sent.push(opts.body); window.__answers.push(await r.clone().text()); }
  return r;
};
"""


@pytest.fixture
def server(make_server):  # make_server: tests/app/conftest.py, shared with the OpenAI client tests
    return make_server()


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
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for browser.get_log
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


# ----- helpers ------------------------------------------------------------------------------------------
def by(css):
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def wait(browser, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(cond)


def open_page(browser, url, **options):
    """Load the demo, record its requests, set the options given (ids of the Options fields)."""
    browser.get(url + "/")
    browser.execute_script(RECORD_FETCH)
    if options:
        browser.find_element(*by("#options summary")).click()
        for name, value in options.items():
            field = browser.find_element(*by(f"#{name}"))
            if field.tag_name == "select":
                from selenium.webdriver.support.ui import Select

                Select(field).select_by_value(value)
            else:
                field.clear()
                field.send_keys(str(value))


def answers(browser) -> list[dict]:
    return [json.loads(t) for t in browser.execute_script("return window.__answers")]


def sent(browser) -> list[dict]:
    return [json.loads(t) for t in browser.execute_script("return window.__sent")]


def dialog_texts(browser) -> list[str]:
    return [li.text for li in browser.find_elements(*by("#dialog li.turn .text"))]


def wait_answers(browser, k):
    """Until the k-th answer is on the page (the status shows it and nothing is pending)."""
    wait(browser, lambda d: len(d.execute_script("return window.__answers")) >= k
         and not d.find_elements(*by("#dialog .pending")) and d.find_element(*by("#submit")).is_enabled())


def check_answer_shown(browser, answer: dict) -> None:
    """The replies, their exact seeds and the latent picture are those of ``answer``."""
    replies = browser.find_elements(*by("#replies li.reply"))
    assert [li.find_element(*by(".text")).text for li in replies] == [r["text"] for r in answer["replies"]]
    assert [li.find_element(*by(".seed")).text for li in replies] == [f"seed {r['seed']}" for r in answer["replies"]]
    assert f"seed {answer['seed']} " in browser.find_element(*by("#status")).text
    # one point per reply, numbered as the replies (a highlighted point is drawn last, on top)
    points = sorted(browser.find_elements(*by("#latent-plot .point")), key=lambda p: int(p.get_attribute("data-reply")))
    assert [p.get_attribute("data-reply") for p in points] == [str(i + 1) for i in range(len(replies))]
    std = answer["prior"]["std"]
    a, b = sorted(range(len(std)), key=lambda j: (-std[j], j))[:2]  # the prior's two widest dimensions
    labels = [t.text for t in browser.find_elements(*by("#latent-plot .axis-label"))]
    assert labels[0].startswith(f"z[{a}]") and labels[1].startswith(f"z[{b}]"), labels
    for p, r in zip(points, answer["replies"]):
        assert float(p.get_attribute("data-x")) == pytest.approx(r["latent"][a])
        assert float(p.get_attribute("data-y")) == pytest.approx(r["latent"][b])
    assert len(browser.find_elements(*by("#latent-plot ellipse"))) == 2  # the prior's 1- and 2-sigma


# ----- tests --------------------------------------------------------------------------------------------
def test_conversation_built_by_clicks(server, browser):
    """Type the first turn, then three turns by clicking replies: each click adds the reply to the dialog
    and asks again with the whole dialog; the page shows the replies, seeds and latent codes the API sent."""
    open_page(browser, server, n=4, strategy="sample", seed=BIG_SEED)
    assert "cvae-dialog" in browser.title
    assert not browser.find_elements(*by("#dialog li")) and not browser.find_element(*by("#choices")).is_displayed()
    browser.find_element(*by("#context")).send_keys("Hello, how are you?")
    browser.find_element(*by("#submit")).click()
    wait_answers(browser, 1)
    expected = ["Hello, how are you?"]
    assert dialog_texts(browser) == expected
    assert browser.find_element(*by("#context")).get_attribute("value") == ""
    for step, pick in enumerate((0, 1, 2), start=1):
        answer = answers(browser)[-1]
        assert len(answer["replies"]) >= 3, answer
        check_answer_shown(browser, answer)
        chosen = answer["replies"][pick]
        browser.find_elements(*by("#replies button.choice"))[pick].click()
        wait_answers(browser, step + 1)
        expected.append(chosen["text"])
        assert dialog_texts(browser) == expected
        assert sent(browser)[-1]["context"] == expected  # the whole dialog, the chosen reply last
        origin = browser.find_elements(*by("#dialog li.turn .origin"))[-1].text
        assert origin == f"reply {pick + 1} of {len(answer['replies'])} · seed {chosen['seed']}"
    turns = browser.find_elements(*by("#dialog li.turn"))
    assert [t.get_attribute("class").split()[1] for t in turns] == ["a", "b", "a", "b"]  # speakers alternate
    check_answer_shown(browser, answers(browser)[-1])
    # the seeds passed 2^53 and were shown digit for digit, including ones a JavaScript number would round
    seeds = [r["seed"] for a in answers(browser) for r in a["replies"]]
    assert all(s > 2**53 for s in seeds) and any(int(float(s)) != s for s in seeds)
    assert all(a["seed"] == BIG_SEED for a in answers(browser))
    # nothing the page or the browser asked for failed (the browser's own request for an icon included)
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_undo_start_over_keyboard_and_linked_highlight(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server, n=3, strategy="sample", seed=5)
    browser.find_element(*by("#context")).send_keys("Hi there!", Keys.SHIFT, Keys.ENTER, Keys.NULL, "Hello!", Keys.ENTER)
    wait_answers(browser, 1)
    assert dialog_texts(browser) == ["Hi there!", "Hello!"]  # one turn per line
    first = answers(browser)[0]
    # hovering a point marks its reply, and focusing a reply marks its point
    point = browser.find_elements(*by("#latent-plot .point"))[1]
    ActionChains(browser).move_to_element(point.find_element(*by(".marker"))).perform()
    wait(browser, lambda d: "active" in d.find_elements(*by("#replies li.reply"))[1].get_attribute("class"))
    browser.execute_script("arguments[0].focus()", browser.find_elements(*by("#replies button.choice"))[2])
    active = browser.find_elements(*by("#latent-plot .point.active"))
    assert [p.get_attribute("data-reply") for p in active] == ["3"]
    # the key 2 chooses reply 2
    browser.find_element(*by("body")).send_keys("2")
    wait_answers(browser, 2)
    assert dialog_texts(browser)[-1] == first["replies"][1]["text"]
    # undo: back to the replies offered before, without asking the server again
    browser.find_element(*by("#undo")).click()
    assert len(dialog_texts(browser)) == 2
    check_answer_shown(browser, first)
    assert len(answers(browser)) == 2
    browser.find_element(*by("#undo")).click()
    assert dialog_texts(browser) == [] and not browser.find_element(*by("#choices")).is_displayed()
    assert not browser.find_element(*by("#undo")).is_enabled()
    # start over after a step
    browser.find_element(*by("#context")).send_keys("Good morning.", Keys.ENTER)
    wait_answers(browser, 3)
    assert browser.find_element(*by("#restart")).is_enabled()
    browser.find_element(*by("#restart")).click()
    assert dialog_texts(browser) == [] and not browser.find_element(*by("#choices")).is_displayed()


def test_19_digit_seeds_exact_and_bad_seed_message(server, browser):
    """Seeds go up to 2^63 - 2, beyond what a JavaScript number holds exactly: the page sends the digits as
    typed (a number would turn ...806 into ...808) and refuses a seed out of range before sending."""
    seed = "9223372036854775806"
    open_page(browser, server, seed=seed)
    browser.find_element(*by("#context")).send_keys("Hello, how are you?")
    browser.find_element(*by("#submit")).click()
    wait_answers(browser, 1)
    assert f'"seed":{seed}' in browser.execute_script("return window.__sent[0]")
    check_answer_shown(browser, answers(browser)[0])
    for bad in ("-5", "9223372036854775807", "12a"):
        browser.find_element(*by("#seed")).clear()
        browser.find_element(*by("#seed")).send_keys(bad)
        browser.find_elements(*by("#replies button.choice"))[0].click()
        wait(browser, lambda d: d.find_element(*by("#error")).is_displayed())
        assert "whole number from 0 to 9223372036854775806" in browser.find_element(*by("#error")).text
    assert len(answers(browser)) == 1 and len(dialog_texts(browser)) == 1  # nothing sent, nothing added


def test_errors_shown_and_dialog_unchanged(server, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    browser.find_element(*by("#submit")).click()
    wait(browser, lambda d: d.find_element(*by("#error")).is_displayed())
    assert "type a turn first" in browser.find_element(*by("#error")).text
    long_turn = "x" * 1001
    browser.find_element(*by("#context")).send_keys(long_turn, Keys.ENTER)
    wait(browser, lambda d: "1000 characters" in d.find_element(*by("#error")).text)
    assert "turn 1:" in browser.find_element(*by("#error")).text
    assert dialog_texts(browser) == [] and browser.find_element(*by("#context")).get_attribute("value") == long_turn
    assert browser.find_element(*by("#error")).get_attribute("role") == "alert"


def test_api_key(make_server, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, make_server(api_key="sesame"))
    browser.find_element(*by("#context")).send_keys("Hello!", Keys.ENTER)
    wait(browser, lambda d: d.find_element(*by("#error")).is_displayed())
    assert "API key" in browser.find_element(*by("#error")).text and dialog_texts(browser) == []
    assert browser.find_element(*by("#api_key")).is_displayed()  # Options opened to enter it
    browser.find_element(*by("#api_key")).send_keys("sesame")
    browser.find_element(*by("#submit")).click()
    wait_answers(browser, 2)
    assert not browser.find_element(*by("#error")).is_displayed()
    assert dialog_texts(browser) == ["Hello!"]
    check_answer_shown(browser, answers(browser)[1])


def test_docs_page_renders_offline(server, browser):
    browser.get(server + "/docs")
    wait(browser, lambda d: d.find_elements(*by(".swagger-ui .opblock")))
    assert "/respond" in browser.find_element(*by(".swagger-ui")).text


def test_screenshot_script(tiny_bundle, tmp_path):
    """scripts/demo_screenshots.py (the README's images) builds a dialog by clicks and writes two full pages."""
    import struct
    import subprocess
    import sys
    from pathlib import Path

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "scripts/demo_screenshots.py", "--bundle", str(tiny_bundle),
                          "--out", str(tmp_path), "--n", "3", "--picks", "0,0"],
                         cwd=repo, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    for name in ("demo-first-turn.png", "demo-conversation.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and str(tmp_path / name) in out.stdout
        width, height = struct.unpack(">II", png[16:24])
        assert width == 1200 and height > 700, (name, width, height)
    bad = subprocess.run([sys.executable, "scripts/demo_screenshots.py", "--n", "3", "--picks", "5"],
                         cwd=repo, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--picks must be between 0 and n - 1 = 2" in bad.stderr
