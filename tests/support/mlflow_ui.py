"""The MLflow 3.17 UI in headless Debian chromium: the browser, waits, and the screenshots of a sweep.

The browser test of `tests/test_sweep_mlflow_server.py` takes them of its small sweep; the docs' screenshots
are the same pages of a real quick sweep, refreshed with
`python3 -m tests.support.mlflow_ui http://127.0.0.1:PORT quick_emodb docs/screenshots` (see docs/sweeps.md).
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3.17's training view (its default is the GenAI view)
RUN_COLUMNS = ("ua", "wa")  # metric columns shown in the experiment's runs table
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")  # attribute columns a sweep leaves empty
TRIAL_CHARTS = ("ua", "wa", "mean_fold_ua", "segment_accuracy", "changed_label_share", "target_entropy")
SIZE = (1600, 1000)


def find_chromium() -> tuple[str, str] | None:
    """Debian's chromium and its chromedriver (no driver download), or None if either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def headless_chromium(size: tuple[int, int] = SIZE) -> Any:
    """A headless chromium whose page (not window) is `size` pixels, so screenshots are exactly that."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                           "chromium-driver)")
    o = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size[0]},{size[1]}"):
        o.add_argument(arg)
    o.binary_location = found[0]
    d = webdriver.Chrome(service=Service(found[1]), options=o)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
    return d


def wait_for_text(d: Any, needles: Sequence[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = d.find_element("tag name", "body").text
        missing = [n for n in needles if n not in body]
        if not missing:
            return body
        assert time.monotonic() < deadline, f"not shown after {timeout:.0f} s: {missing}\n{body[:2000]}"
        time.sleep(1)


def wait_for_element(d: Any, xpath: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed()]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{xpath} not shown after {timeout:.0f} s"
        time.sleep(1)


def _show_column(d: Any, name: str, shown: bool) -> None:
    """Tick or untick one column in the runs table's column selector (searched by name)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
    if not box:  # the selector closes after each change
        d.find_element(By.CSS_SELECTOR, "button[data-component-id*='experimentviewrunscolumnselector']").click()
        box = [wait_for_element(d, "//input[@placeholder='Search columns']")]
    box[0].send_keys(Keys.CONTROL, "a", Keys.DELETE, name)
    time.sleep(1.5)  # let the list filter first: a click on a row that then moves lands on another column
    xpath = f"//span[contains(@class, 'tree-title')][normalize-space(.)='{name}']"

    def ticked() -> bool:
        node = wait_for_element(d, xpath).find_element(By.XPATH, "./ancestor::div[contains(@class, 'tree-treenode')][1]")
        return "checkbox-checked" in (node.get_attribute("class") or "")

    if ticked() != shown:
        wait_for_element(d, xpath).click()
        time.sleep(1)
        if not d.find_elements(By.XPATH, xpath):  # the selector closed: reopen it to check the change
            _show_column(d, name, shown)
            return
        assert ticked() == shown, f"column {name!r} is still {'hidden' if shown else 'shown'}"


def _widen(d: Any, header: str, pixels: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cell = wait_for_element(d, f"//div[contains(@class, 'ag-header-cell')][.//*[normalize-space(text())='{header}']]")
    handle = cell.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
    ActionChains(d).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()


def _rest_pointer(d: Any) -> None:
    """Move the pointer to the page's bottom left corner (the sidebar's empty part), so no tooltip or chart
    toolbar is in the picture."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    body = d.find_element(By.TAG_NAME, "body")
    ActionChains(d).move_to_element_with_offset(body, -body.size["width"] // 2 + 20,
                                                body.size["height"] // 2 - 120).perform()
    time.sleep(1)


def _close_assistant(d: Any) -> None:
    """Close the MLflow Assistant panel, which covers a third of a page when it opens by itself."""
    from selenium.webdriver.common.by import By

    for button in d.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        if button.is_displayed():
            button.click()
            time.sleep(1)


def sweep_screenshots(d: Any, uri: str, experiment_id: str, parent: Any, children: Sequence[Any],
                      out: Path) -> list[Path]:
    """The experiment's runs table (parent expanded, UA and WA columns), the trial with the most iterations
    (its UA/WA charts) and that trial's accuracy plot among its artifacts, as PNGs in `out`."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    d.get(f"{uri}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}")
    wait_for_text(d, ["Runs", parent.info.run_name])
    _close_assistant(d)
    for name in HIDDEN_COLUMNS:
        _show_column(d, name, False)
    for name in RUN_COLUMNS:
        _show_column(d, name, True)
    d.find_element(By.TAG_NAME, "body").click()  # close the selector
    for button in d.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"):
        button.click()  # expand the parent's child runs
    wait_for_text(d, [r.info.run_name for r in children])
    _widen(d, "Run Name", 180)
    for name in RUN_COLUMNS:
        _widen(d, name, 40)
    _rest_pointer(d)
    shots = [out / "mlflow_experiment.png"]
    d.save_screenshot(str(shots[-1]))

    child = max(children, key=lambda r: (r.data.tags.get("dsl.stopped_early", "").lower() != "true",
                                         int(r.data.params.get("iterations", 0)), r.data.metrics.get("ua", 0.0)))
    d.get(f"{uri}/#/experiments/{experiment_id}/runs/{child.info.run_id}/model-metrics?{TRAINING_VIEW}")
    search = wait_for_element(d, "//input[@placeholder='Search metric charts']")
    search.send_keys("^(" + "|".join(TRIAL_CHARTS) + ")$")  # the chart search takes a regular expression
    wait_for_text(d, [child.info.run_name, "Step"])
    for name in TRIAL_CHARTS:
        wait_for_element(d, f"//*[normalize-space(text())='{name}']")  # each chart's title
    _close_assistant(d)
    _rest_pointer(d)
    shots.append(out / "mlflow_child_run.png")
    d.save_screenshot(str(shots[-1]))

    d.get(f"{uri}/#/experiments/{experiment_id}/runs/{child.info.run_id}/artifacts?{TRAINING_VIEW}")
    wait_for_text(d, ["plots", "result.json", "config.yaml"])
    wait_for_element(d, "//*[normalize-space(text())='plots']").click()
    wait_for_text(d, ["confusion_matrix.png", "accuracy_per_iteration.png", "segment_posteriors.png"])
    wait_for_element(d, "//*[normalize-space(text())='accuracy_per_iteration.png']").click()
    deadline = time.monotonic() + 60
    while not [i for i in d.find_elements(By.TAG_NAME, "img") if "accuracy_per_iteration" in
               (i.get_attribute("alt") or "") and d.execute_script("return arguments[0].naturalWidth", i) > 0]:
        assert time.monotonic() < deadline, "the plot preview did not load"
        time.sleep(1)
    _close_assistant(d)
    _rest_pointer(d)
    shots.append(out / "mlflow_child_plots.png")
    d.save_screenshot(str(shots[-1]))
    return shots


def main(argv: Sequence[str] | None = None) -> int:
    import mlflow

    p = argparse.ArgumentParser(description="screenshots of a sweep in the MLflow UI (headless chromium)")
    p.add_argument("uri", help="the tracking server, e.g. http://127.0.0.1:5000")
    p.add_argument("sweep", help="the sweep's name (its MLflow experiment)")
    p.add_argument("out", type=Path, help="folder for the PNGs, e.g. docs/screenshots")
    args = p.parse_args(argv)
    client = mlflow.MlflowClient(args.uri)
    exp = client.get_experiment_by_name(args.sweep)
    if exp is None:
        p.error(f"{args.uri} has no experiment {args.sweep!r}")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dsl.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("dsl.role") == "trial"]
    if not parents or not children:
        p.error(f"experiment {args.sweep!r} has no sweep parent run with trials")
    d = headless_chromium()
    try:
        for shot in sweep_screenshots(d, args.uri, exp.experiment_id, parents[0], children, args.out):
            print(shot)
    finally:
        d.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
