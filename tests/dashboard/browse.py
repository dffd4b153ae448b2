"""Drives the dashboard in headless Chromium (tests/dashboard.rs runs it).

Arguments: endpoint, admin password, image, site to create on, pid of a
site to kill, screenshot path, a process image file to upload. Logs in, sees
every site reachable, uploads an image, creates an instance on another site,
sees it run, stops it, kills a site and sees it marked unreachable. Exits non-zero with a message on the first check that fails.
"""

import os
import signal
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

endpoint, password, image, site, victim, screenshot, upload = sys.argv[1:8]

options = webdriver.ChromeOptions()
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 60, poll_frequency=0.25)


def rows(table):
    # Read in one go: the page redraws its tables at every poll.
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.innerText.trim()))",
        table,
    )


def until(what, check):
    try:
        return wait.until(lambda _: check())
    except Exception:
        driver.save_screenshot(screenshot)
        error = driver.find_element(By.ID, "error").text
        # What the page showed, so that a failure in CI says why.
        shown = "\n".join(f"  {t}: {rows(t)}" for t in ["sites", "instances", "intents"])
        sys.exit(f"dashboard: never saw {what} (page error: {error!r}); screenshot in {screenshot}\n{shown}")


try:
    driver.get(endpoint + "/")
    until("the login form", lambda: driver.find_element(By.ID, "login").is_displayed())
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    until("three reachable sites", lambda: len(rows("sites")) == 3 and all(r[2] == "yes" for r in rows("sites")))
    # Every site reaches the two others: six "yes" in the matrix.
    until("who sees whom", lambda: sum(c == "yes" for r in rows("reach") for c in r) == 6)
    print("dashboard: logged in; sites:", [r[0] for r in rows("sites")])

    up = driver.find_element(By.ID, "upload")
    up.find_element(By.NAME, "file").send_keys(upload)
    up.find_element(By.NAME, "name").send_keys("uploaded")
    up.find_element(By.CSS_SELECTOR, "button").click()
    until("the uploaded image", lambda: any(r[1] == "uploaded" and r[5] != "nobody" for r in rows("images")))
    print("dashboard: uploaded an image:", next(r for r in rows("images") if r[1] == "uploaded"))

    form = driver.find_element(By.ID, "create")
    until("the image in the create form",
          lambda: image in [o.text for o in Select(form.find_element(By.NAME, "image")).options])
    form.find_element(By.NAME, "name").send_keys("from-browser")
    Select(form.find_element(By.NAME, "image")).select_by_visible_text(image)
    Select(form.find_element(By.NAME, "site")).select_by_visible_text(site)
    form.find_element(By.CSS_SELECTOR, "button").click()

    def instance():
        return next((r for r in rows("instances") if r[2] == "from-browser"), None)

    until("the instance running", lambda: instance() and instance()[0] == site and instance()[3].startswith("running"))
    print("dashboard: created from-browser on", site, "and it runs")

    driver.execute_script(
        "for (const tr of document.querySelectorAll('#instances tbody tr'))"
        "  if (tr.cells[2].innerText.trim() === 'from-browser') tr.querySelector('button[data-act=stop]').click()"
    )
    until("the instance stopped", lambda: instance() and instance()[3].startswith("stopped"))
    print("dashboard: stopped it")

    os.kill(int(victim), signal.SIGKILL)
    killed_at = time.time()
    until("the killed site unreachable", lambda: any(r[2] == "no" for r in rows("sites")))
    # Its row unknown, and the others no longer reach it.
    until("the cut in the matrix", lambda: sum(c == "no" for r in rows("reach") for c in r) == 2
          and sum(c == "?" for r in rows("reach") for c in r) == 2)
    print(f"dashboard: a killed site shows unreachable after {time.time() - killed_at:.1f} s")
    time.sleep(2.5)  # one more poll, so that the picture shows every table filled
    driver.save_screenshot(screenshot)
finally:
    driver.quit()
