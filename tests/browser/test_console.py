"""The console in a real browser: Debian's headless Chromium driven by Selenium through
Debian's ChromeDriver, against `crm-ledger serve` on a ledger delivered in two parts. An agent
signs in, finds a customer by e-mail, reaches the 360 page in two clicks, moves as_of back and
sees the older state, and opens the journey. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct horse battery"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "crm_ledger.cli", "--data-dir", str(data), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def answers(port: int) -> bool:
    """Whether something accepts connections on the port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`crm-ledger serve` on a small history imported in two deliveries, checkpoint between."""
    folder = tmp_path_factory.mktemp("browser")
    data, events = folder / "ledger", folder / "events.jsonl"
    made = json.loads(
        cli(
            data,
            "--format",
            "json",
            "generate",
            "--seed",
            "7",
            "--customers",
            "150",
            "--out",
            str(events),
            "--split-at",
            "2025-01-01",
        ).stdout
    )
    cli(data, "init")
    cli(data, "import", made["backfill_file"])
    checkpoint = json.loads(cli(data, "--format", "json", "audit", "checkpoint").stdout)
    cli(data, "import", made["later_file"])
    cli(data, "users", "add", "ada", "--role", "agent", "--password", PASSWORD)
    cli(data, "users", "add", "ivy", "--role", "analyst", "--password", PASSWORD)
    later = [json.loads(x) for x in Path(made["later_file"]).read_text().splitlines()]
    late = next(e for e in later if e["type"] == "OrderPlaced" and e["occurred_at"] < "2025")
    registered = [json.loads(x) for x in events.read_text().splitlines()]
    who = next(
        e
        for e in registered
        if e["type"] == "CustomerRegistered" and e["customer_id"] == late["customer_id"]
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crm_ledger.cli",
            "--data-dir",
            str(data),
            "serve",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(port) or process.poll() is not None, 60, "crm-ledger serve")
    if process.poll() is not None:
        output = process.stdout.read() if process.stdout else ""
        pytest.fail(f"crm-ledger serve did not start: {output[-2000:]}")
    yield {
        "url": url,
        "customer": late["customer_id"],
        "email": who["email"],
        "checkpoint": checkpoint["created_at"],
    }
    process.terminate()
    process.wait(timeout=30)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are missing: run scripts/chromium.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="crm-ledger-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shot(driver: webdriver.Chrome, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def loaded(driver: webdriver.Chrome, wait: WebDriverWait[webdriver.Chrome]) -> None:
    """Wait until the page has finished loading (scripts included)."""
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def orders_shown(driver: webdriver.Chrome) -> int:
    return sum(int(td.text) for td in driver.find_elements(By.CSS_SELECTOR, "#value td.orders"))


def test_an_agent_finds_a_customer_and_travels_back(
    server: dict[str, Any], browser: webdriver.Chrome
) -> None:
    wait = WebDriverWait(browser, 60)  # conditions, not sleeps: generous for a loaded machine
    browser.get(server["url"] + "/")
    wait.until(ready.presence_of_element_located((By.ID, "name")))
    browser.find_element(By.ID, "name").send_keys("ada")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "signin").click()
    search = wait.until(ready.presence_of_element_located((By.ID, "q")))
    search.send_keys(server["email"])
    browser.find_element(By.ID, "find").click()  # click 1
    link = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "a.customer-link")))
    shot(browser, "search")
    link.click()  # click 2: the 360 page
    wait.until(ready.text_to_be_present_in_element((By.ID, "customer-title"), server["customer"]))
    loaded(browser, wait)
    now = orders_shown(browser)
    assert "everything the ledger knows now" in browser.find_element(By.ID, "moment-shown").text
    # the audit box, loaded by htmx: the chain recomputed, and checkpoint 1 covers the backfill
    verdict = wait.until(ready.presence_of_element_located((By.ID, "audit-verdict")))
    assert verdict.text.startswith("Chain verified"), verdict.text
    assert "checkpoint 1" in browser.find_element(By.ID, "audit-status").text
    shot(browser, "customer-360")
    # What the ledger knew when checkpoint 1 was signed, to the millisecond: a whole second
    # could fall before the first delivery's commit (it often ends in the same second).
    at = server["checkpoint"][:23]
    browser.execute_script("document.getElementById('as_of').value = arguments[0]", at)
    # Chromium shows the value normalised (…16.450 reads …16.45): compare the moments.
    shown_value = browser.find_element(By.ID, "as_of").get_attribute("value") or ""
    assert datetime.fromisoformat(shown_value) == datetime.fromisoformat(at)
    loaded(browser, wait)
    browser.find_element(By.ID, "travel").click()
    wait.until(ready.url_contains("as_of=2"))
    shown = wait.until(ready.presence_of_element_located((By.ID, "moment-shown")))
    assert "knew at" in shown.text, browser.find_element(By.TAG_NAME, "main").text[:500]
    then = orders_shown(browser)
    assert then < now, (then, now)
    shot(browser, "customer-360-as-of")
    loaded(browser, wait)
    browser.find_element(By.ID, "journey-link").click()
    wait.until(ready.presence_of_element_located((By.ID, "journey")))
    assert browser.find_elements(By.CSS_SELECTOR, "#journey tbody tr")
    shot(browser, "journey")


def sign_in(browser: webdriver.Chrome, url: str, name: str) -> WebDriverWait[webdriver.Chrome]:
    wait = WebDriverWait(browser, 60)
    browser.delete_all_cookies()
    browser.get(url + "/signin")
    wait.until(ready.presence_of_element_located((By.ID, "name")))
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "signin").click()
    wait.until(ready.presence_of_element_located((By.CLASS_NAME, "signout")))
    return wait


def test_an_analyst_opens_an_initiative_and_sees_its_chart(
    server: dict[str, Any], browser: webdriver.Chrome
) -> None:
    wait = sign_in(browser, server["url"], "ivy")
    browser.get(server["url"] + "/initiatives")
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "a.initiative-link"))).click()
    wait.until(ready.presence_of_element_located((By.ID, "estimates")))
    loaded(browser, wait)
    chart = browser.find_element(By.ID, "chart")
    wait.until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", chart
        )
    )
    assert "during" in browser.find_element(By.ID, "estimates").text
    shot(browser, "initiative")
    browser.get(server["url"] + "/customers/" + server["customer"])
    wait.until(ready.presence_of_element_located((By.ID, "profile")))
    email = browser.find_element(By.CSS_SELECTOR, "#profile .profile-email").text
    assert "@" not in email  # an analyst sees personal fields masked


def test_the_readme_console_example_runs_as_written(tmp_path: Path) -> None:
    """`users add` answered at its password prompt, then `serve` on its default address,
    which answers the sign-in page (and stops on SIGTERM)."""
    from tests.readme import examples, full_env, shell

    env = {"CRM_LEDGER_DATA_DIR": str(tmp_path / "ledger")}
    assert shell("crm-ledger init", tmp_path, env).returncode == 0
    [block] = examples("console")
    add, serve = block.commands()
    added = shell(add, tmp_path, env, answers=f"{PASSWORD}\n{PASSWORD}\n")
    assert added.returncode == 0, added.stderr
    assert "alice" in added.stdout
    process = subprocess.Popen(
        ["/bin/bash", "-c", serve],
        cwd=tmp_path,
        env=full_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(8600) or process.poll() is not None, 60, "crm-ledger serve")
        assert process.poll() is None, "crm-ledger serve stopped"
        with socket.create_connection(("127.0.0.1", 8600), timeout=10) as s:
            s.sendall(b"GET /signin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            reply = s.recv(200)
        assert reply.startswith(b"HTTP/1.1 200") or reply.startswith(b"HTTP/1.0 200")
    finally:
        process.terminate()
        process.wait(timeout=30)
