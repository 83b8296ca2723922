"""`stable-diffusion-v3.ipynb` as people use it: README's "The notebook in Jupyter", done in a real browser.

In a fresh copy of the repository (its tracked files and untracked ones that git does not ignore; no `models/`),
JupyterLab starts on 127.0.0.1 with a token and `SD3_MODEL_ID=tiny`. Headless Chromium opens the notebook and picks
Run > Run All Cells from the menu bar. Then the tests check what a person checks by eye: no cell shows an error, the
option widgets are drawn, the image and the weight format grid are shown, and the inline Gradio demo in the last
cell answers a typed prompt with an image of the size set in its sliders; a widget changed by hand changes what the
cells below it do; closing JupyterLab stops the kernel and the demo with it (also when a test fails: the fixture's
finalizer does it). 3.5-5.5 minutes on 2 cores, most of it the notebook's four tiny-model conversions (int8; fp16
and int4 for the format comparison; the LoRA fused at conversion); the rest (previews, step cache, LoRA adapters,
image-to-image, openvino.genai) takes seconds on the tiny model.
Screenshots go to `artifacts/jupyterlab-*.png`.
"""

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

try:  # the `browser` fixture says how to install what is missing (skipped here, a failure in CI)
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = Path(os.environ.get("SD3_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))
NOTEBOOK = "stable-diffusion-v3.ipynb"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's chromium, chromium-driver
CHROMIUM_ARGUMENTS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # the pages may reach this machine only
)
LAB_USER_SETTINGS = {  # no "Would you like to get notified about official Jupyter news?" toast over the notebook
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
RUN_ALL_TIMEOUT_S = 420  # Run All takes 3-5 minutes on 2 busy cores (four tiny-model conversions)
DEMO_WIDTH, DEMO_HEIGHT = 128, 96  # typed into the demo's size sliders: not square, not their initial value
STDERR = "application/vnd.jupyter.stderr"  # JupyterLab shows a cell's error as this too, with IPython's traceback

# Each cell of the notebook as the page shows it: code or not, its prompt ("[3]:", "[*]:", "[ ]:") and its outputs.
CELLS_SCRIPT = """
return [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(cell => ({
    is_code: cell.classList.contains('jp-CodeCell'),
    prompt: (cell.querySelector('.jp-InputPrompt') || {textContent: ''}).textContent.trim(),
    outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(output => ({
        mime: output.getAttribute('data-mime-type') || '',
        text: output.textContent,
        images: [...output.querySelectorAll('img')].map(image => [image.naturalWidth, image.naturalHeight]),
    })),
}));
"""
# The status bar's "Python 3 (ipykernel) | Idle": before the kernel is connected it reads "No Kernel | ...", while the
# notebook toolbar's execution indicator already says "idle" (Run All then opens the "Select Kernel" dialog).
KERNEL_STATUS_SCRIPT = """
const items = [...document.querySelectorAll('.jp-StatusBar-Item')].map(item => item.textContent.trim());
return items.find(text => text.includes(' | ')) || '';
"""


@dataclass
class Output:
    mime: str  # "" for a widget
    text: str
    images: list = field(default_factory=list)  # [width, height] of each image it shows


@dataclass
class Cell:
    is_code: bool
    prompt: str
    outputs: list[Output]

    @property
    def ran(self) -> bool:
        return re.fullmatch(r"\[\d+\]:", self.prompt) is not None

    @property
    def text(self) -> str:
        return "\n".join(output.text for output in self.outputs)


# ----------------------------------------------------------------------------------------------------------
# JupyterLab in a fresh copy of the repository
# ----------------------------------------------------------------------------------------------------------


def copy_repository(destination: Path) -> None:
    """The files a fresh clone of this work tree would have (with uncommitted changes), and `.venv` linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO_ROOT / name).is_file():  # a tracked file deleted in the work tree is still listed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    (destination / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class JupyterLab:
    process: subprocess.Popen
    repo: Path  # the fresh copy it serves
    url: str  # http://127.0.0.1:PORT/
    token: str
    log_path: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}lab/tree/{name}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kernel_processes(self) -> list:
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [child for child in children if "ipykernel_launcher" in " ".join(child.cmdline())]

    def close(self) -> None:
        """SIGTERM: the server shuts its kernels down (and the demo inside one); what is left after that is killed."""
        if self.process.poll() is not None:
            return
        try:  # the kernels run in sessions of their own: a signal to the server's group does not reach them
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)


def start_jupyter_lab(root: Path) -> JupyterLab:
    """`.venv/bin/python -m jupyter lab stable-diffusion-v3.ipynb` with `SD3_MODEL_ID=tiny`, as README says, in a
    fresh copy under `root`, on a free loopback port with a random token and nothing of the user's Jupyter setup."""
    repo = root / "repo"
    copy_repository(repo)
    assert not (repo / "models").exists(), "a fresh copy has no converted models"
    dirs = {name: root / name for name in ("config", "data", "runtime", "lab-settings", "workspaces", "ipython")}
    for folder in dirs.values():
        folder.mkdir()
    for name, settings in LAB_USER_SETTINGS.items():
        (dirs["lab-settings"] / name).parent.mkdir(parents=True, exist_ok=True)
        (dirs["lab-settings"] / name).write_text(json.dumps(settings))
    environment = {
        **os.environ,
        "SD3_MODEL_ID": "tiny",
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["lab-settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    python = repo / ".venv" / "bin" / "python"
    token, port = secrets.token_hex(24), free_loopback_port()
    command = [
        str(python if python.exists() else sys.executable),
        *("-m", "jupyter", "lab", NOTEBOOK),
        *("--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0"),
        f"--IdentityProvider.token={token}",  # what `--ServerApp.token` sets, by its current name
        "--LabApp.news_url=None",
        "--allow-root",  # CI runs as root
    ]
    log_path = root / "jupyterlab.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=repo, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return JupyterLab(process=process, repo=repo, url=f"http://127.0.0.1:{port}/", token=token, log_path=log_path)


def wait_until_answering(lab: JupyterLab, *, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if lab.process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {lab.process.returncode}:\n{lab.log_tail()}")
        try:
            if httpx.get(f"{lab.url}api/status", params={"token": lab.token}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"JupyterLab did not answer on {lab.url} within {timeout} s:\n{lab.log_tail()}")
        time.sleep(0.5)


def fail_or_skip(message: str) -> None:
    """A missing browser or JupyterLab skips the tests here, and fails them in CI (`CI=true`)."""
    pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    if importlib.util.find_spec("jupyterlab") is None:
        fail_or_skip("jupyterlab is not installed: pip install -r requirements-test.txt")
    lab = start_jupyter_lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        wait_until_answering(lab)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if webdriver is None:
        missing.append("selenium (pip)")
    if missing:
        fail_or_skip(f"{missing} not installed: apt-get install -y chromium chromium-driver; pip install selenium")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROMIUM_ARGUMENTS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ----------------------------------------------------------------------------------------------------------
# The notebook page
# ----------------------------------------------------------------------------------------------------------


class NotebookPage:
    """The open notebook in JupyterLab, read and driven through what the page shows."""

    def __init__(self, driver, *, lab: JupyterLab):
        self.driver, self.lab = driver, lab
        notebook = json.loads((lab.repo / NOTEBOOK).read_text())
        self.code_sources = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]

    def cells(self) -> list[Cell]:
        shown = self.driver.execute_script(CELLS_SCRIPT)
        return [Cell(**{**cell, "outputs": [Output(**output) for output in cell["outputs"]]}) for cell in shown]

    def code_cells(self) -> list[Cell]:
        return [cell for cell in self.cells() if cell.is_code]

    def cell_elements(self, selector: str = ".jp-Cell") -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, f".jp-Notebook {selector}")

    def code_cell_with(self, fragment: str) -> int:
        """The index among the code cells of the one whose source holds `fragment`."""
        matches = [index for index, source in enumerate(self.code_sources) if fragment in source]
        assert matches, f"no code cell of {NOTEBOOK} contains {fragment!r}"
        return matches[0]

    def kernel_status(self) -> str:
        """What the status bar says of the kernel ("idle", "busy", "connecting", ...), or "no kernel"."""
        name, _, status = self.driver.execute_script(KERNEL_STATUS_SCRIPT).partition(" | ")
        return "no kernel" if name in ("", "No Kernel") else status.lower()

    def choose_menu_item(self, menu: str, item: str) -> None:
        self.driver.find_element(
            By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel') and normalize-space()='{menu}']"
        ).click()
        self.driver.find_element(
            By.XPATH, f"//div[contains(@class, 'lm-Menu-itemLabel') and normalize-space()='{item}']"
        ).click()

    def wait_until_idle(self, done, *, timeout: float, what: str) -> list[Cell]:
        """The cells once no cell waits to run ("[*]"), the kernel is idle and `done(cells)`, twice in a row."""
        deadline, settled = time.monotonic() + timeout, 0
        while True:
            cells = self.cells()
            quiet = not any(cell.prompt == "[*]:" for cell in cells) and self.kernel_status() == "idle"
            settled = settled + 1 if quiet and done(cells) else 0
            if settled == 2:
                return cells
            if time.monotonic() > deadline:
                self.screenshot("jupyterlab-timeout.png")
                prompts = " ".join(cell.prompt for cell in cells if cell.is_code)
                pytest.fail(
                    f"{what} did not finish within {timeout} s (prompts: {prompts}; kernel: {self.kernel_status()}); "
                    f"see {ARTIFACTS_DIR / 'jupyterlab-timeout.png'}\n{self.lab.log_tail()}"
                )
            time.sleep(2)

    def scroll_to(self, element, *, block: str = "start") -> None:
        for _ in range(2):  # cells off screen are laid out at a guessed height: the first scroll lands near, not on
            self.driver.execute_script(f"arguments[0].scrollIntoView({{block: '{block}'}})", element)
            time.sleep(0.5)  # let the cells that come into view render

    def screenshot(self, name: str) -> Path:
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / name
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        return path

    def widget(self, kind: str, label: str):
        """The <input> of a checkbox or the <select> of a dropdown widget, found by the label it shows."""
        if kind == "checkbox":
            xpath = f"//div[contains(@class, 'widget-checkbox')][.//span[normalize-space()='{label}']]//input"
        else:
            xpath = f"//div[contains(@class, 'widget-dropdown')][label[normalize-space()='{label}']]//select"
        return self.driver.find_element(By.XPATH, xpath)


@pytest.fixture(scope="module")
def notebook(jupyter_lab, browser) -> NotebookPage:
    """The notebook opened in JupyterLab, after Run > Run All Cells and the kernel is idle again."""
    browser.get(jupyter_lab.notebook_url(NOTEBOOK))
    page = NotebookPage(browser, lab=jupyter_lab)
    WebDriverWait(browser, 90).until(
        lambda _: page.cell_elements() and page.kernel_status() == "idle",
        message="the notebook opened without a connected, idle kernel",
    )
    page.choose_menu_item("Run", "Run All Cells")
    try:
        WebDriverWait(browser, 30).until(lambda _: any(cell.prompt == "[*]:" or cell.ran for cell in page.cells()))
    except TimeoutException:
        page.screenshot("jupyterlab-timeout.png")
        pytest.fail(f"Run All Cells started no cell; see {ARTIFACTS_DIR / 'jupyterlab-timeout.png'}")
    page.wait_until_idle(lambda cells: any(cell.ran for cell in cells), timeout=RUN_ALL_TIMEOUT_S, what="Run All")
    return page


def options_line(cells: list[Cell]) -> tuple[int, str]:
    """The cell that prints the options the widgets hold, and the weight format it printed."""
    for index, cell in enumerate(cells):
        found = re.search(r"T5: (?:True|False), weights: ([\w-]+), device: ", cell.text)
        if found:
            return index, found.group(1)
    raise AssertionError("no cell printed the options line 'T5: ..., weights: ..., device: ...'")


def converted_folder(cells: list[Cell]) -> tuple[int, str]:
    """The conversion cell (it shows the folder `convert_sd3` returned) and that folder."""
    for index, cell in enumerate(cells):
        found = re.search(r"Path\('([^']*-ov-[^']*)'\)", cell.text)
        if found:
            return index, found.group(1)
    raise AssertionError("no cell shows the converted model folder (`convert_sd3`'s return value)")


# ----------------------------------------------------------------------------------------------------------
# What a person sees
# ----------------------------------------------------------------------------------------------------------


def test_run_all_runs_every_cell_and_none_shows_an_error(notebook):
    code_cells = notebook.code_cells()
    errors = [
        output.text[:2000]
        for cell in code_cells
        for output in cell.outputs
        if (output.mime == STDERR and "Traceback (most recent call last)" in output.text)
        or output.text.startswith(("Error displaying widget", "Javascript Error:"))  # the page could not draw it
    ]
    assert errors == [], "cells show errors:\n\n" + "\n\n".join(errors)
    not_run = [index for index, cell in enumerate(code_cells) if not cell.ran]
    assert not_run == [], f"code cells {not_run} did not run: {[notebook.code_sources[i][:80] for i in not_run]}"


def test_the_option_widgets_are_drawn_and_hold_the_printed_options(notebook):
    use_t5 = notebook.widget("checkbox", "Use T5 text encoder")
    notebook.scroll_to(use_t5, block="center")
    notebook.screenshot("jupyterlab-notebook.png")
    weights_dropdown, device_dropdown = notebook.widget("dropdown", "Weights:"), notebook.widget("dropdown", "Device:")
    for element in (use_t5, weights_dropdown, device_dropdown):
        assert element.is_displayed()
    weights, device = Select(weights_dropdown), Select(device_dropdown)
    assert {"fp16", "int8", "int4"} <= {option.text for option in weights.options}
    assert {"CPU", "AUTO"} <= {option.text for option in device.options}
    cells = notebook.cells()
    printed = cells[options_line(cells)[0]].text
    shown = f"T5: {use_t5.is_selected()}, weights: {weights.first_selected_option.text}, "
    shown += f"device: {device.first_selected_option.text}"
    assert shown in printed, f"the widgets show {shown!r}, the options cell printed {printed!r}"


def test_the_image_and_the_weight_format_grid_are_shown(notebook):
    cells = notebook.cells()
    size = re.search(r"(\d+)x(\d+) px", "\n".join(cell.text for cell in cells))
    assert size, "no cell printed the image size ('WxH px')"
    width, height = map(int, size.groups())
    shown = [image for cell in cells for output in cell.outputs for image in output.images]
    assert [width, height] in shown, f"no {width}x{height} image shown; images: {shown}"

    grid_cell = notebook.code_cells()[notebook.code_cell_with("weight-formats")]
    grids = [image for output in grid_cell.outputs for image in output.images]
    assert any(w >= 3 * width and h > height for w, h in grids), f"no grid of three {width}x{height} images: {grids}"
    assert any("weight format" in cell.text and "int4" in cell.text for cell in cells), "no format comparison table"

    grid_element = notebook.cell_elements(".jp-CodeCell")[notebook.code_cell_with("weight-formats")]
    notebook.scroll_to(grid_element.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output img"), block="center")
    notebook.screenshot("jupyterlab-formats.png")

    _, folder = converted_folder(cells)
    assert (notebook.lab.repo / folder / "model_index.json").is_file(), f"{folder} is not in the fresh copy"


def demo_frame(notebook):
    """The inline demo's <iframe> in the last code cell's output."""
    frames = notebook.cell_elements(".jp-CodeCell")[-1].find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output iframe")
    assert frames, "the last code cell shows no inline demo"
    return frames[-1]


def test_the_inline_demo_answers_a_prompt_with_an_image_of_the_chosen_size(notebook):
    driver, frame = notebook.driver, demo_frame(notebook)
    assert frame.get_attribute("src").startswith("http://127.0.0.1:")
    notebook.scroll_to(frame, block="center")
    driver.switch_to.frame(frame)
    try:
        prompt = WebDriverWait(driver, 60).until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#prompt input, #prompt textarea"))
        )
        driver.find_element(By.XPATH, "//button[.//span[normalize-space()='Advanced settings']]").click()
        for label, value in (("Width", DEMO_WIDTH), ("Height", DEMO_HEIGHT)):
            number_box = (By.CSS_SELECTOR, f'input[aria-label="number input for {label}"]')
            box = WebDriverWait(driver, 10).until(expected_conditions.element_to_be_clickable(number_box))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(value), Keys.TAB)
        prompt.send_keys("a red apple on a wooden table")
        driver.find_element(By.ID, "run").click()

        def result(driver):  # the final image: while the generation runs, previews show under the progress
            shown = [img for img in driver.find_elements(By.CSS_SELECTOR, "#result img") if img.get_attribute("src")]
            trackers = driver.find_elements(By.CSS_SELECTOR, "#result [data-testid='status-tracker']")
            done = all("hide" in tracker.get_attribute("class").split() for tracker in trackers)
            script = "return arguments[0].complete && arguments[0].naturalWidth > 0"
            loaded = shown and done and driver.execute_script(script, shown[0])
            return shown[0] if loaded else None

        image = WebDriverWait(driver, 120).until(result)
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    finally:
        driver.switch_to.default_content()
    notebook.screenshot("jupyterlab-demo.png")
    assert size == [DEMO_WIDTH, DEMO_HEIGHT]


def test_a_changed_widget_changes_what_the_cells_below_do(notebook):
    """Weights: another format, then Shift+Enter from the options cell down to the conversion cell."""
    cells = notebook.cells()
    (options_index, before), (convert_index, folder_before) = options_line(cells), converted_folder(cells)
    assert f"-ov-{before}" in folder_before and options_index < convert_index
    chosen = "fp16" if before != "fp16" else "int8"  # converted already by the format comparison: no wait
    dropdown = notebook.widget("dropdown", "Weights:")
    notebook.scroll_to(dropdown, block="center")
    Select(dropdown).select_by_visible_text(chosen)

    convert_prompt = cells[convert_index].prompt
    options_cell = notebook.cell_elements()[options_index]
    notebook.scroll_to(options_cell, block="center")
    options_cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").click()  # select the cell, as a person does
    for _ in range(convert_index - options_index + 1):  # markdown cells between are rendered and passed
        ActionChains(notebook.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        time.sleep(0.3)
    cells = notebook.wait_until_idle(
        lambda cells: cells[convert_index].ran and cells[convert_index].prompt != convert_prompt,
        timeout=120,
        what="Shift+Enter down to the conversion cell",
    )
    assert options_line(cells) == (options_index, chosen), cells[options_index].text
    _, folder_after = converted_folder(cells)
    assert f"-ov-{chosen}" in folder_after and folder_after == folder_before.replace(f"-ov-{before}", f"-ov-{chosen}")
    notebook.scroll_to(dropdown, block="center")
    notebook.screenshot("jupyterlab-changed-widget.png")  # the dropdown and the options line it printed
    notebook.scroll_to(notebook.cell_elements()[convert_index], block="center")
    notebook.screenshot("jupyterlab-changed-conversion.png")  # the conversion cell's folder for that format


def test_closing_jupyterlab_stops_the_kernel_and_the_demo(jupyter_lab, notebook):
    demo_url = demo_frame(notebook).get_attribute("src")
    kernels = jupyter_lab.kernel_processes()
    assert kernels and httpx.get(demo_url, timeout=10).status_code == 200
    jupyter_lab.close()
    assert jupyter_lab.process.returncode is not None
    _, alive = psutil.wait_procs(kernels, timeout=5)
    assert alive == [], f"kernels left running: {alive}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(demo_url, timeout=5)
