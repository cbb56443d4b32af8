"""The page in a real browser (Debian's chromium and chromedriver, driven by Selenium): it
lists the model, a cat photo answers "cat" with score bars, a text file is refused by the page
before it is sent, a text file named .png reaches the server and the page shows the server's
own error, and the live panel shows the batches. Screenshots at a phone's 390 x 844 and a
desktop's 1280 x 800 are written to out/test-artifacts/ (look at them).

CI installs chromium and chromium-driver and sets VISIONLOOP_REQUIRE_BROWSER=1, so there a
missing browser fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA
from visionloop.models.catdog import CatDog
from visionloop.settings import ModelSettings

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _browser(width: int, height: int):
    if not (CHROMIUM and DRIVER):
        if os.environ.get("VISIONLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("no chromium/chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_window_size(width, height)
    return driver


def _wait(driver, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def choose(driver, path: Path) -> None:
    """Pick ``path`` alone in the page's file input (send_keys adds to a multiple input)."""
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "photos")
    driver.execute_script("arguments[0].value = '';", field)
    field.send_keys(str(path))


@pytest.fixture(scope="module")
def catdog():
    return CatDog().prepare(ModelSettings(engine="torch"))


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
def test_the_page_answers_a_cat_and_shows_errors_in_words(serve, catdog, tmp_path, width, height):
    from selenium.webdriver.common.by import By

    server = serve(model=catdog)
    driver = _browser(width, height)
    try:
        driver.get(server.url + "/")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        assert driver.find_element(By.ID, "model").get_attribute("value") == "catdog"
        _wait(driver, lambda d: d.find_element(By.ID, "connection").text == "connected")
        # a cat photo: "cat", with a bar per score
        driver.find_element(By.ID, "photos").send_keys(str(DATA / "cat_chelsea.png"))
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .label"))
        assert driver.find_element(By.CSS_SELECTOR, "#results .label").text == "label: cat"
        meters = driver.find_elements(By.CSS_SELECTOR, "#results meter")
        assert len(meters) == 3
        # the live panel counts the batch it just ran
        _wait(driver, lambda d: "≤1<" in d.find_element(By.ID, "live").get_attribute("innerHTML"))
        assert not driver.find_element(By.ID, "token-row").is_displayed()  # no token asked
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"page-{width}x{height}.png"))
        # two photos at once: one multipart request, an answer each
        field = driver.find_element(By.ID, "photos")
        driver.execute_script("arguments[0].value = '';", field)
        field.send_keys(f"{DATA / 'cat_chelsea.png'}\n{DATA / 'dog_german_shepherd.webp'}")
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .label")) == 2)
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .label")]
        assert labels == ["label: cat", "label: dog"]
        # a text file: refused by the page, nothing sent
        text = tmp_path / "notes.txt"
        text.write_text("not a photo")
        choose(driver, text)
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: d.find_element(By.ID, "errors").text)
        assert (
            "notes.txt: not a JPEG, PNG, WebP, GIF or BMP image"
            in driver.find_element(By.ID, "errors").text
        )
        # text named .png: the page sends it, the server refuses it, the page says why
        fake = tmp_path / "fake.png"
        fake.write_text("not a photo either")
        choose(driver, fake)
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: "415" in d.find_element(By.ID, "errors").text)
        shown = driver.find_element(By.ID, "errors").text
        assert "415: not an image: the data does not start like any of JPEG" in shown
        driver.save_screenshot(str(ARTIFACTS / f"page-{width}x{height}-error.png"))
    finally:
        driver.quit()


def test_masks_overlay_restored_picture_token_and_disconnection(serve, tmp_path):
    """A segmenter's masks drawn over the photo with a toggle per class and an opacity; a
    restorer's picture beside the photo with a comparison slider; a server with an API token
    makes the page ask for it (kept in memory) and then answers; a server that goes away shows
    "disconnected"."""
    import torch
    from selenium.webdriver.common.by import By

    from visionloop.models.catseg import CatSeg
    from visionloop.models.restorer import RestoreNet, Restorer

    torch.manual_seed(0)
    segmenter = CatSeg(size=64).prepare(ModelSettings(model="catseg", engine="torch"))
    with torch.no_grad():  # every pixel a cat, none an animal: a visible, checkable overlay
        segmenter.network.classifier.weight.zero_()
        segmenter.network.classifier.bias.copy_(torch.tensor([9.0, -9.0]))
    seg_server = serve(model=segmenter, api_token="s3cret")
    network = RestoreNet(8, 1)
    with torch.no_grad():
        network.tail[-1].bias.fill_(0.15)  # a brighter picture
    restorer = Restorer(network, size=64).prepare(ModelSettings(model="restorer", engine="torch"))
    restore_server = serve(model=restorer)
    driver = _browser(1280, 800)
    try:
        driver.get(seg_server.url + "/")
        _wait(driver, lambda d: d.find_element(By.ID, "token-row").is_displayed())
        assert "API token" in driver.find_element(By.ID, "errors").text
        driver.find_element(By.ID, "token").send_keys("s3cret")
        choose(driver, DATA / "cat_chelsea.png")
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results fieldset input"))
        boxes = driver.find_elements(By.CSS_SELECTOR, "#results fieldset input[type=checkbox]")
        assert len(boxes) == 2  # cat, animal
        assert "cat (100.0 %)" in driver.find_element(By.CSS_SELECTOR, "#results fieldset").text
        pixel = (
            "const c = document.querySelectorAll('#results canvas')[1];"
            "return Array.from(c.getContext('2d').getImageData(32, 32, 1, 1).data);"
        )
        assert driver.execute_script(pixel)[3] > 0  # the overlay paints the cat
        boxes[0].click()  # cat off: nothing left to paint
        assert not boxes[0].is_selected()
        assert driver.execute_script(pixel)[3] == 0
        kept = "return [localStorage.length, sessionStorage.length, document.cookie, location.href]"
        assert driver.execute_script(kept) == [0, 0, "", seg_server.url + "/"]  # memory only
        driver.save_screenshot(str(ARTIFACTS / "page-masks.png"))

        driver.get(restore_server.url + "/")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        choose(driver, DATA / "cat_chelsea.png")
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .pair img"))
        assert driver.find_element(By.CSS_SELECTOR, "#results .label").text == "label: restored"
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#results figcaption")]
        assert captions == ["sent (as the model saw it)", "restored"]
        driver.save_screenshot(str(ARTIFACTS / "page-restored.png"))
        restore_server.stop()
        _wait(driver, lambda d: d.find_element(By.ID, "connection").text
              == "disconnected: retrying")  # fmt: skip
    finally:
        driver.quit()
