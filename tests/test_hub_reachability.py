"""An unreachable hub is not asked (issue 32): offline, `datasets` and `transformers` retried for
25-60 s and printed a dozen lines before their error; a connection attempt says it at once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from mtsmart.cli import main
from mtsmart.data.readers import DataError, read_split
from mtsmart.model import multitask
from mtsmart.options.data import DataConfig
from mtsmart.support.hub import OFFLINE_VARIABLES, PROXY_VARIABLES, hub_unreachable
from mtsmart.tasks.spec import load_task_spec

REPO = Path(__file__).resolve().parents[1]
NOWHERE = "https://hub.invalid"  # RFC 6761: .invalid never resolves, with or without a network


@pytest.fixture
def hub_nowhere(monkeypatch):
    for name in (*OFFLINE_VARIABLES, *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)


def test_an_endpoint_that_does_not_resolve_is_unreachable(hub_nowhere):
    assert hub_unreachable().startswith("hub.invalid:443: ")


def test_a_listening_endpoint_is_reachable(hub_nowhere, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None


@pytest.mark.parametrize("variable, value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "true"),
                                             ("HTTPS_PROXY", "http://proxy.example:3128")])
def test_offline_mode_or_a_proxy_leave_the_answer_to_the_libraries(hub_nowhere, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert hub_unreachable() is None


def test_a_dataset_is_not_asked_of_an_unreachable_hub(hub_nowhere, monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the unreachable hub was asked"))
    with pytest.raises(DataError) as error:
        read_split(load_task_spec("scitail"), "train", DataConfig(root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and "was not asked: the hub cannot be reached (hub.invalid:443: " in message
    assert "HF_HUB_OFFLINE=1" in message and str(tmp_path / "scitail") in message


def test_a_model_of_an_unreachable_hub_is_read_from_the_cache_only(hub_nowhere, monkeypatch):
    asked = {}

    class Loader:
        @staticmethod
        def from_pretrained(name, **kwargs):
            asked.update(kwargs)
            raise OSError("not in the cache")

    with pytest.raises(multitask.ModelSourceError) as error:
        multitask.from_pretrained(Loader, "bert-base-uncased", "config")
    assert asked == {"local_files_only": True}
    assert "the Hugging Face hub cannot be reached (hub.invalid:443: " in str(error.value)
    assert "no cached copy was found" in str(error.value)


def test_the_readme_promise_offline_training_stops_with_one_line(hub_nowhere, tmp_path, data_root):
    """README: 'offline with neither, training stops at once with one line naming both places' —
    now without HF_HUB_OFFLINE set too (the retries are skipped, not waited out)."""
    env = {key: value for key, value in os.environ.items() if key not in (*OFFLINE_VARIABLES, *PROXY_VARIABLES)}
    env.update({"MTSMART_DATA": str(data_root), "HF_ENDPOINT": NOWHERE, "OMP_NUM_THREADS": "1"})
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "mtsmart", "train", "model.name_or_path=tiny", "tasks=[scitail]",
                             f"output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "scitail_1.0_train.tsv" in result.stderr and "the hub cannot be reached" in result.stderr
    assert not out.exists()


def test_a_hub_model_id_with_an_unreachable_hub_is_one_line(hub_nowhere, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "model.name_or_path=nobody-has/this-model-xyz", "tasks=[rte]", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nobody-has/this-model-xyz'" in err and "cannot be reached" in err, err
    assert not out.exists()


def test_retry_warnings_are_held_back_while_the_hub_is_asked_and_errors_still_show(hub_nowhere, monkeypatch):
    import logging

    from mtsmart.support.hub import quiet_retries

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("huggingface_hub")
    logger.addHandler(handler)
    before = logger.level
    try:
        with quiet_retries():
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 8s [Retry 5/5].")
            logging.getLogger("huggingface_hub.utils._http").error("a real error")
        logging.getLogger("huggingface_hub.utils._http").warning("after")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a real error", "after"]
    assert logger.level == before
