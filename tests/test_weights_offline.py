"""Offline detection before timm asks the Hugging Face hub: no network needed, no minute of retries."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import timm
from huggingface_hub import constants

from dermalens.config import ConfigError
from dermalens.models import hub
from dermalens.models.hub import hub_offline_if_unreachable
from dermalens.models.weights import PretrainedWeightsWarning, load_pretrained_backbone

pytestmark = pytest.mark.unit

# The smallest timm model with weights on the hub: pretrained=True really goes to the hub for it.
HUB_MODEL = "test_efficientnet.r160_in1k"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                   "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def hub_setting_unset(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset (conftest sets it), no proxy, an empty hub cache, no probe made yet.

    monkeypatch puts the variables, huggingface_hub's constants and the
    probe cache back afterwards, whatever the code under test set.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub, "_hub_reachable", None)
    return monkeypatch


@pytest.fixture
def no_network(hub_setting_unset):
    """Every TCP connection fails at once, as with no network; the addresses asked for are recorded."""
    asked = []

    def refuse(address, *args, **kwargs):
        asked.append(tuple(address))
        raise OSError("Network is unreachable")

    hub_setting_unset.setattr(socket, "create_connection", refuse)
    return asked


@contextmanager
def _closed_port() -> Iterator[int]:
    """A port that refuses connections: bound, never listening, and held for the test, so that no other
    process (the suite runs on two workers) can take it in between."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def test_unreachable_hub_goes_offline_fast_and_falls_back_to_random_weights(no_network, caplog):
    backbone = timm.create_model(HUB_MODEL, pretrained=False, num_classes=0, global_pool="")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger=hub.__name__):
        with pytest.warns(PretrainedWeightsWarning, match="NO PRETRAINED WEIGHTS"):
            source = load_pretrained_backbone(backbone, HUB_MODEL, "auto")
    elapsed = time.monotonic() - started
    assert source == "random (no pretrained weights available)"
    assert elapsed < 10, f"took {elapsed:.1f} s: the hub was retried instead of skipped"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE is True and constants.is_offline_mode()
    assert no_network[0] == ("huggingface.co", 443)
    offline_lines = [r for r in caplog.records if r.levelno == logging.INFO and "HF_HUB_OFFLINE=1" in r.getMessage()]
    assert len(offline_lines) == 1 and "huggingface.co" in offline_lines[0].getMessage()
    # Once per process: the second model neither probes nor logs again. Asked for by name, timm's weights
    # are required: random weights would be another recipe than the one named (it trained on, said once).
    probes = len(no_network)
    with pytest.raises(ConfigError, match=rf"model.pretrained=timm: timm could not fetch ImageNet weights for "
                                          rf"'{HUB_MODEL}'.*say auto to train from random weights"):
        load_pretrained_backbone(backbone, HUB_MODEL, "timm")
    assert len(no_network) == probes


def test_explicit_hf_hub_offline_0_is_obeyed_without_a_probe(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_offline_if_unreachable() is False
    assert no_network == []
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE is False
    assert hub._hub_reachable is None     # nothing decided, nothing cached


@pytest.mark.parametrize("variable, value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")])
def test_explicit_offline_is_obeyed_without_a_probe(no_network, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert hub_offline_if_unreachable() is True
    assert no_network == []


def test_endpoint_on_a_closed_port_is_offline(hub_setting_unset):
    with _closed_port() as port:
        hub_setting_unset.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        started = time.monotonic()
        assert hub_offline_if_unreachable() is True
        assert time.monotonic() - started < 3
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def test_reachable_endpoint_stays_online(hub_setting_unset, caplog):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        hub_setting_unset.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        with caplog.at_level(logging.INFO, logger=hub.__name__):
            assert hub_offline_if_unreachable() is False
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False
    assert not [r for r in caplog.records if "HF_HUB_OFFLINE" in r.getMessage()]
    assert hub._hub_reachable is True


def test_a_hanging_lookup_is_cut_off_at_the_timeout(hub_setting_unset):
    release = threading.Event()

    def hang(address, *args, **kwargs):   # a DNS lookup that never answers ignores the socket timeout
        release.wait(30)
        raise OSError("gave up")

    hub_setting_unset.setattr(socket, "create_connection", hang)
    started = time.monotonic()
    try:
        assert hub_offline_if_unreachable(timeout=0.3) is True
        assert time.monotonic() - started < 2
    finally:
        release.set()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_probe_goes_to_the_proxy_when_one_is_set(no_network, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_offline_if_unreachable() is True
    assert no_network == [("proxy.example", 3128)]
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert hub.hub_probe_address() == ("huggingface.co", 443)
