"""Shared fixtures. Tests never reach a model hub: the packaged model is all they use."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no library downloads a browser), closed at the end of the
    module (so no Playwright event loop outlives the browser tests); skips where either is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does where it can)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: make install")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def seaweedfs():
    """One real S3-compatible server (SeaweedFS) for the tests that store results in a bucket;
    they skip, saying why, where it cannot be found or started."""
    from seaweedfs_server import SeaweedServer, Unavailable

    server = SeaweedServer()
    try:
        server.start()
    except Unavailable as error:
        server.close()
        pytest.skip(f"no S3-compatible server for the object-storage tests: {error}")
    yield server
    server.close()


@pytest.fixture
def bucket(seaweedfs, monkeypatch, request):
    """A fresh bucket named after the test, with the server's AWS variables set for it."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    seaweedfs.make_bucket(name)
    for variable, value in seaweedfs.environment().items():
        monkeypatch.setenv(variable, value)
    return name
