"""The review page in a real browser, on a phone-sized screen, after `invsync demo`.

Headless Debian chromium driven by playwright (`make test` installs chromium through
scripts/ensure-chromium; playwright's own browser download is never used). The test never
skips: without chromium it fails saying how to get it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import dagster as dg
import pytest

from invsync_pipeline.assets.review_decisions import review_decisions
from invsync_pipeline.recon.review_store import review_store
from invsync_pipeline.reference.demo import demo_resources, run_demo
from invsync_pipeline.reference.mes_service import run_in_thread
from invsync_pipeline.settings import PROJECT_ROOT, load_settings
from invsync_pipeline.warehouse import open_warehouse
from invsync_pipeline_tests.review_server import PASSWORD, serve

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHROMIUM = os.environ.get("INVSYNC_CHROMIUM", "/usr/bin/chromium")
PHONE = {"width": 390, "height": 844}
# Set to refresh the README's screenshot (docs/review-page.png) from this run.
UPDATE_SCREENSHOT = os.environ.get("INVSYNC_UPDATE_SCREENSHOT") == "1"


def _browser(pw):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: run scripts/ensure-chromium (make test does), or apt-get "
                    "install chromium, or set INVSYNC_CHROMIUM to a Chromium binary", pytrace=False)  # fmt: skip
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def test_a_supervisor_signs_in_on_a_phone_approves_a_critical_item_of_the_demo_and_sees_it_applied(
    settings, topology, tmp_path, monkeypatch
):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("INVSYNC_REVIEW_PASSWORD", PASSWORD)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # as `make demo` does
    run_demo(hours=2, seed=11, log=lambda _: None)
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        held_in_duckdb = {r[0] for r in conn.execute(
            "SELECT correction_id FROM recon.corrections WHERE status = 'held_for_review'").fetchall()}  # fmt: skip
    with review_store(settings) as store:
        held = store.queue()
    assert held and {i["correction_id"] for i in held} == held_in_duckdb  # every held correction of the demo
    item = next(i for i in held if i["critical"] and i["explained_by"])

    with serve(load_settings()) as url, sync_playwright() as pw:
        browser = _browser(pw)
        try:
            signed_out = browser.new_page(viewport=PHONE)
            with pytest.raises(PlaywrightError, match="AUTH"):  # chromium's answer to a 401 without credentials
                signed_out.goto(f"{url}/")

            context = browser.new_context(viewport=PHONE, device_scale_factor=2,
                                          http_credentials={"username": "Sam Lee", "password": PASSWORD})  # fmt: skip
            page = context.new_page()
            page.goto(f"{url}/")
            queue = page.content()
            assert all(i["correction_id"] in queue for i in held)
            # Usable on a phone: nothing wider than the screen.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(tmp_path / "queue.png"))

            page.click(f"a[href='/items/{item['correction_id']}']")
            page.wait_for_url(f"**/items/{item['correction_id']}")
            shown = page.inner_text("main")
            assert item["correction_id"] in shown and item["rule"] in shown and "Balances at the hour" in shown
            assert all(tx in shown for tx in item["explained_by"])  # the movements behind it
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.fill("input[name=by]", "Sam Lee")
            page.fill("textarea[name=reason]", "counted on the shelf: the ERP is right")
            page.screenshot(path=str(tmp_path / "item.png"), full_page=True)
            page.click("button[value=approve]")
            page.wait_for_url(f"**/items/{item['correction_id']}")
            assert "waiting for the next run" in page.inner_text("main")

            # The run the review decisions sensor launches, against the demo's systems.
            token = secrets.token_urlsafe(16)
            mes = run_in_thread(settings.home / "mes.sqlite", token)
            try:
                resources = demo_resources(settings.home / "invsync.yaml", settings.home, mes.url, token)
                assert dg.materialize([review_decisions], resources=resources).success
            finally:
                mes.stop()

            page.reload()
            text = page.inner_text("main")
            assert "approved · applied" in text, text
            trail = page.inner_text("text=Audit trail >> xpath=..")
            assert re.search(r"approved\s+supervisor:Sam Lee\s+counted on the shelf", trail), trail
            assert re.search(r"applied\s+auto:hourly\s+approved by supervisor:Sam Lee", trail), trail
        finally:
            browser.close()
    if UPDATE_SCREENSHOT:
        shutil.copyfile(tmp_path / "item.png", PROJECT_ROOT / "docs" / "review-page.png")
        shutil.copyfile(tmp_path / "queue.png", PROJECT_ROOT / "docs" / "review-queue.png")
