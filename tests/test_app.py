"""app.py in a real browser: Debian's headless Chromium, driven by playwright, against a live server.

One app process serves a tiny checkpoint (the `tiny` preset with the real vocabulary, saved the way
train.py saves, metrics included) and a corrupt file. The browser types a prompt, generates greedily,
and the text in the page must equal generate.py's stdout for the same checkpoint, prompt and length;
the panel must show the checkpoint's own step and losses; the corrupt model and an empty prompt must
give a message in the page, not a traceback. A screenshot is saved (to $APP_SCREENSHOT when set: that
is how docs/app_screenshot.png was made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "ROMEO:"
N_NEW = 24

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_json_path):
    from smollm2.checkpoint import save_checkpoint
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM

    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(4321)
    cfg = get_config("tiny")
    model = SmolLM2ForCausalLM(cfg).eval()
    path = root / "tiny.pt"
    metrics = {"device": "cpu", "data": "input.txt: 341,094 ids", "tokens_per_step": 128,
               "train_loss": 9.87654, "train_loss_step": 40, "val_loss": 10.12345, "val_loss_step": 40}
    save_checkpoint(str(path), dict(global_step=40, model=model.state_dict(), model_config=cfg.to_dict(),
                                    args={"tokenizer_id": str(tokenizer_json_path), "model": "tiny",
                                          "input_file": "input.txt"}, metrics=metrics))
    corrupt = root / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint\n")
    return path, corrupt, metrics


@pytest.fixture(scope="module")
def server(checkpoint):
    path, corrupt, _ = checkpoint
    port = free_port()
    log = open(path.parent / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(path), "--model", str(corrupt),
                             "--port", str(port), "--device", "cpu", "--max_tokens", "64"],
                            cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"app.py exited {proc.returncode}: {(path.parent / 'app.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("app.py did not answer within 120 s")
                time.sleep(0.3)
        yield url, path.parent / "app.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a loaded 2-core CI box: loading and decoding take seconds

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.set_default_timeout(60_000)
        pg.goto(server[0])
        yield pg
        browser.close()


def test_greedy_text_in_the_browser_equals_generate_py(checkpoint, server, page, tmp_path):
    from playwright.sync_api import expect

    path, _, metrics = checkpoint
    # generate.py runs while the browser works: the same checkpoint, prompt, length, greedy.
    ref = subprocess.Popen([sys.executable, str(REPO / "generate.py"), "--checkpoint", str(path), "--prompt", PROMPT,
                            "--max_new_tokens", str(N_NEW), "--temperature", "0", "--device", "cpu"],
                           cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    info = page.locator("#info")
    expect(info).to_contain_text("training steps")  # the first model loaded at page load
    text = info.inner_text()
    for expected in ("40", f"{metrics['train_loss']:.4f}", f"{metrics['val_loss']:.4f}", f"{40 * 128:,}", "cpu"):
        assert expected in text, (expected, text)

    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#greedy input[type=checkbox]").check()
    n_box = page.locator("#max_new_tokens input[type=number]")
    n_box.fill(str(N_NEW))
    n_box.press("Enter")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("done:")
    shown = page.locator("#output textarea").input_value()
    shot = Path(os.environ.get("APP_SCREENSHOT") or tmp_path / "app.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out, err = ref.communicate(timeout=120)
    assert ref.returncode == 0, err.decode()
    expected = out.decode("utf-8")
    assert expected.endswith("\n") and len(expected) > len(PROMPT) + 1
    assert shown == expected[:-1]  # generate.py ends the sample with a newline
    assert f"done: {N_NEW} tokens" in page.locator("#status").inner_text()  # the length setting took


def test_empty_prompt_and_bad_model_give_messages_in_the_page(server, page):
    from playwright.sync_api import expect

    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Type a prompt first")

    page.locator("#model input").click()
    page.get_by_role("option", name="corrupt.pt (checkpoint)").click()
    expect(page.locator("#status")).to_contain_text("not a readable checkpoint")
    log = server[1].read_text()
    assert "Traceback" not in log, log
