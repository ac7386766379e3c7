"""The review page served on an ephemeral port in a thread, as `invsync review serve` serves it."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator

import uvicorn

from invsync_pipeline.review_page.app import create_app
from invsync_pipeline.settings import Settings

PASSWORD = "s3cret-for-tests"


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The page's base URL while it runs; ``settings`` must carry ``review_password``."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="review-page", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the review page did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def csrf_of(page: str) -> str:
    """The token of the decision form on an item's page."""
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, "the item page has no decision form"
    return match.group(1)
