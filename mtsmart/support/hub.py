"""Whether the Hugging Face hub can be reached, asked once before a download: offline, the
libraries retry for 25-60 s and print a dozen lines before they fail (issue 32); a connection
attempt fails in milliseconds when the name does not resolve."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator, Optional
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def hub_unreachable(timeout_s: float = 5.0) -> Optional[str]:
    """Why the hub (HF_ENDPOINT, default huggingface.co) cannot be reached now; None when it can,
    or when the answer is not ours to give: offline mode is set (the libraries then read their
    caches without asking the hub) or a proxy carries the traffic (a direct connection says nothing)."""
    if any(os.environ.get(name, "").upper() in TRUE_VALUES for name in OFFLINE_VARIABLES):
        return None
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"{host}:{port}: {error.strerror or type(error).__name__}"
    return None


@contextlib.contextmanager
def quiet_retries() -> Iterator[None]:
    """huggingface_hub's retry warnings (`'…' thrown while requesting …`, `Retrying in 8s [Retry
    5/5]`) held back while mtsmart asks the hub: the library already bounds them (5 tries, at
    most 8 s apart), and mtsmart says in one line what failed. Its errors still show."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
