"""The Dagster UI in a real browser (Debian's Chromium through chromedriver and selenium),
against the real webserver and daemon serving the example pipelines: the job list, a job's
graph (nodes and graph ins/outs named by step and asset), a run launched from the Launchpad
(which shows only its own params) with a param changed (and what it wrote, and the SparkSession's
start as a line of its own), the asset catalog with readable names, an asset's owners, tags,
code version and code reference, where its Spark work ran (native or not), lineage, check
results on the asset they check, the schedule and sensor on the Automation page. Each page is
kept as a screenshot in the test's temporary directory; a failure lists them."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline_defs_tests.conftest import copy_configs, write_json
from pipeline_defs_tests.e2e.test_webserver import gql, launch, run_status, serve

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class Browser:
    def __init__(self, port: int, shots: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        o = Options()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1600,1000", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"):
            o.add_argument(a)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        self.base, self.shots, self.taken = f"http://127.0.0.1:{port}", shots, []
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str, *expected: str, name: str, timeout: float = 60) -> str:
        """Opens a page and waits until its text shows every expected string; returns the
        text. A screenshot of the page is kept either way."""
        self.driver.get(self.base + path)
        return self.wait_for(*expected, name=name, timeout=timeout)

    def wait_for(self, *expected: str, name: str, timeout: float = 60) -> str:
        deadline, text = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            self._skip_welcome()
            text = self.text()
            if all(e in text for e in expected):
                break
            time.sleep(0.5)
        self.shot(name)
        missing = [e for e in expected if e not in text]
        assert not missing, f"{name}: {missing} not on the page; screenshots: {self.taken}"
        return text

    def text(self) -> str:
        from selenium.webdriver.common.by import By
        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - the page is being replaced
            return ""

    def click(self, label: str, name: str, tag: str = "button") -> None:
        """Clicks the button (or another element) with this label, as a user would."""
        from selenium.webdriver.common.by import By
        deadline = time.monotonic() + 30
        while True:
            buttons = [b for b in self.driver.find_elements(
                           By.XPATH, f"//{tag}[normalize-space()='{label}']")
                       if b.is_displayed() and b.is_enabled()]
            if buttons:
                try:
                    buttons[0].click()
                    return
                except Exception:  # noqa: BLE001 - a dialog over it (the welcome): again
                    self._skip_welcome()
            if time.monotonic() > deadline:
                self.shot(name)
                raise AssertionError(f"no button '{label}'; screenshots: {self.taken}")
            time.sleep(0.5)

    def shot(self, name: str) -> None:
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(str(path))

    def _skip_welcome(self) -> None:
        """The first visit's "Join the Dagster community" dialog: Skip."""
        from selenium.webdriver.common.by import By
        for b in self.driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            if b.is_displayed():
                b.click()

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser_world(tmp_path, sample_data):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are missing: scripts/services.sh installs them "
                    "(Debian packages chromium, chromium-driver)")
    configs = copy_configs(tmp_path / "configs")
    (tmp_path / "drop").mkdir()
    write_json(configs / "ui_demo.json", {
        "name": "ui-demo", "params": {"label": "from-the-file"},
        "owners": ["team:analytics"], "tags": {"domain": "people"},
        "schedule": {"cron": "0 6 * * *", "timezone": "UTC"},
        "sensors": [{"type": "newFiles", "path": str(tmp_path / "drop"), "pattern": "*.csv"}],
        "steps": [
            {"type": "extract", "method": "fromFile", "name": "customers_in",
             "config": {"path": str(sample_data / "customers.csv"), "format": "csv"}},
            {"type": "transform", "method": "enrichData", "name": "add_label",
             "config": {"columns": {"label": "'${label}'"}}},
            {"type": "load", "method": "toFile", "name": "label_out", "config": {
                "path": str(tmp_path / "out" / "ui_demo"), "format": "parquet",
                "mode": "overwrite", "assetKey": "labelled_people"}}]})
    with serve(tmp_path, configs, {"PIPELINE_DATA_DIR": str(sample_data),
                                   "PIPELINE_OUTPUT_DIR": str(tmp_path / "out")}) as (port, _):
        browser = Browser(port, tmp_path / "screenshots")
        try:
            yield port, browser, tmp_path
        finally:
            browser.close()


def test_the_ui_in_a_browser(browser_world):
    port, b, tmp_path = browser_world
    log = tmp_path / "daemon.log"
    # a run with validations, for the checks on the asset they check (launched through the
    # API now, looked at in the browser later)
    enrichment = launch(port, "orders_enrichment")

    # the job list
    b.open("/jobs", "orders_enrichment", "customer_upsert", "sales_pivot", "ui_demo",
           name="jobs")
    # a job's graph: one op per step, named as in the file
    location = gql(port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
                         "location { name } } } } }"
                   )["repositoriesOrError"]["nodes"][0]["location"]["name"]
    b.open(f"/locations/{location}/jobs/ui_demo", "labelled_people", "View as Asset Graph",
           name="asset-graph")
    b.click("View as Asset Graph", name="op-graph-toggle", tag="label")
    b.wait_for("ui_demo_steps", "Expand", name="op-graph")
    b.click("Expand", name="op-graph-expand", tag="*")
    graph = b.wait_for("customers_in", "add_label", "label_out", name="op-graph-expanded")
    # nodes and the graph's ins and outs are named by what they are (not src00, t03, or the
    # job's name on every node)
    assert "src00" not in graph and "t03" not in graph and "ui_demo__" not in graph, graph

    # the Launchpad: the file's param is there, and the Spark resource's settings (issue 17)
    b.open(f"/locations/{location}/jobs/ui_demo/playground", "label: from-the-file",
           "spark_config:", "spark.master: local[2]", "params_ui_demo", name="launchpad")
    config = b.driver.execute_script(  # the whole run config, not just the lines on screen
        "return document.querySelector('.CodeMirror').CodeMirror.getValue();")
    assert "params_ui_demo:" in config and "params_orders_enrichment" not in config, config
    changed = b.driver.execute_script(
        "const cm = document.querySelector('.CodeMirror').CodeMirror;"
        "cm.setValue(cm.getValue().replace('label: from-the-file', 'label: from-the-ui'));"
        "return cm.getValue();")
    assert "label: from-the-ui" in changed
    b.wait_for("from-the-ui", name="launchpad-edited")
    b.click("Launch Run", name="launch")
    deadline = time.monotonic() + 60
    while "/runs/" not in b.driver.current_url and time.monotonic() < deadline:
        time.sleep(0.5)
    run_id = b.driver.current_url.rsplit("/runs/", 1)[-1].split("?")[0]
    b.wait_for("Success", name="run-succeeded", timeout=300)
    # the SparkSession's start is a line of the run's log (test_cli.py checks it comes before
    # the first step)
    b.wait_for("Spark session started in", "native execution on (Comet)",
               name="run-spark-start")
    assert run_status(port, run_id) == "SUCCESS", log.read_text()[-3000:]
    table = pq.read_table(tmp_path / "out" / "ui_demo")
    assert set(table["label"].to_pylist()) == {"from-the-ui"} and table.num_rows == 200

    # the asset catalog: readable names (the tables' own), sources under sources/
    b.open("/assets", "labelled_people", "enriched_orders", "monthly_sales", "sources",
           name="catalog")
    # the asset's page: owners and tags from the file, its code version, and where it is
    # written in the pipeline file (its code reference)
    b.open("/assets/labelled_people", "Owners\nanalytics", "domain: people",
           "ui_demo.json, step 3", name="asset-definition")
    node = gql(port, """{ assetNodeOrError(assetKey: {path: ["labelled_people"]}) {
        ... on AssetNode { opVersion owners { ... on TeamAssetOwner { team } } } } }""")
    assert re.fullmatch(r"[0-9a-f]{16}", node["assetNodeOrError"]["opVersion"]), node
    assert node["assetNodeOrError"]["owners"] == [{"team": "analytics"}]
    # where its Spark work ran (docs/acceleration.md): a CSV scan feeds it, so on Spark,
    # with Comet's reason for each operator
    b.open("/assets/labelled_people?view=events", "spark_engine", "Spark", "spark_operators",
           name="asset-engine")
    # lineage: the table and what it was made from
    b.open("/assets/labelled_people?view=lineage", "labelled_people", "customers",
           name="lineage")

    # check results on the asset they check
    deadline = time.monotonic() + 300
    while run_status(port, enrichment) not in ("SUCCESS", "FAILURE") and \
            time.monotonic() < deadline:
        time.sleep(1)
    assert run_status(port, enrichment) == "SUCCESS", log.read_text()[-3000:]
    text = b.open("/assets/enriched_orders?view=checks", "keys_present", "sane_amounts",
                  "Passed", name="checks")
    assert "Failed" not in text
    b.open("/assets/labelled_people?view=checks", "No checks", name="no-checks")

    # the schedule and the sensor on the Automation page
    b.open("/automation", "ui_demo_schedule", "ui_demo_new_files", name="automation")
