"""Tests for utcp.config.Config: defaults, validation, immutability."""

from __future__ import annotations

import dataclasses
import math

import pytest

from utcp.config import Config

POSITIVE_FLOATS = ["msl", "rto_initial", "rto_min", "rto_max", "ack_delay",
                   "keepalive_probe_interval"]
OPTIONAL_FLOATS = ["idle_timeout", "keepalive_interval", "user_timeout", "fin_timeout"]
INT_BOUNDS = {
    "syn_retries": (0, 255),
    "synack_retries": (0, 255),
    "max_retransmissions": (1, 255),
    "keepalive_probes": (1, 255),
    "mss": (64, 65495),
    "recv_buffer": (1024, 1 << 30),
    "send_buffer": (1024, 1 << 30),
    "initial_cwnd_segments": (1, 1000),
    "max_ooo_segments": (1, 1 << 20),
    "max_connections": (1, 1 << 24),
    "max_reassembly_bytes": (0, 1 << 40),
    "max_buffer_memory": (1 << 20, 1 << 44),
}


def test_every_field_is_covered() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    assert names == set(POSITIVE_FLOATS) | set(OPTIONAL_FLOATS) | set(INT_BOUNDS) | {
        "congestion", "pcap", "secret_key", "server_key", "allowed_keys", "pmtu_probing",
        "sack", "timestamps", "pacing"}


def test_pcap_takes_a_path_or_none(tmp_path: object) -> None:
    assert Config().pcap is None
    assert Config(pcap="x.pcap").pcap == "x.pcap"
    with pytest.raises(TypeError):
        Config(pcap=3)  # type: ignore[arg-type]


def test_defaults() -> None:
    c = Config()
    assert c.msl == 30.0
    assert c.syn_retries == 6
    assert c.synack_retries == 2
    assert c.rto_initial == 1.0
    assert c.rto_min == 0.2
    assert c.rto_max == 60.0
    assert c.mss == 1400
    assert c.recv_buffer == 4 * 1024 * 1024
    assert c.send_buffer == 4 * 1024 * 1024
    assert c.idle_timeout is None
    assert c.keepalive_interval == 25.0
    assert c.keepalive_probe_interval == 5.0
    assert c.keepalive_probes == 6
    assert c.user_timeout is None
    assert c.fin_timeout == 60.0
    assert c.congestion == "newreno"
    assert c.ack_delay == 0.04
    assert c.initial_cwnd_segments == 10
    assert c.max_ooo_segments == 1024
    assert c == Config()


# ---------------------------------------------------------------- float fields


@pytest.mark.parametrize("name", POSITIVE_FLOATS + OPTIONAL_FLOATS)
@pytest.mark.parametrize("value", [True, False, "1.0", b"1", [1.0], 1j])
def test_float_wrong_type(name: str, value: object) -> None:
    with pytest.raises(TypeError):
        Config(**{name: value})


@pytest.mark.parametrize("name", POSITIVE_FLOATS)
def test_positive_float_rejects_none(name: str) -> None:
    with pytest.raises(TypeError):
        Config(**{name: None})


@pytest.mark.parametrize("name", POSITIVE_FLOATS + OPTIONAL_FLOATS)
@pytest.mark.parametrize("value", [0, 0.0, -0.0, -1, -0.5, math.inf, -math.inf, math.nan])
def test_float_out_of_range(name: str, value: float) -> None:
    with pytest.raises(ValueError):
        Config(**{name: value})


@pytest.mark.parametrize("name", POSITIVE_FLOATS + OPTIONAL_FLOATS)
def test_float_accepts_positive(name: str) -> None:
    # 0.5 and 1 lie within the default rto_min..rto_max so no cross-check interferes
    value = 0.5 if name != "rto_max" else 1.0
    assert getattr(Config(**{name: value}), name) == value
    int_value = 1
    assert getattr(Config(**{name: int_value}), name) == 1


@pytest.mark.parametrize("name", OPTIONAL_FLOATS)
def test_optional_float_accepts_none(name: str) -> None:
    assert getattr(Config(**{name: None}), name) is None


# ---------------------------------------------------------------- int fields


@pytest.mark.parametrize("name", list(INT_BOUNDS))
@pytest.mark.parametrize("value", [True, False, 100.0, "100", None, 1.5])
def test_int_wrong_type(name: str, value: object) -> None:
    with pytest.raises(TypeError):
        Config(**{name: value})


@pytest.mark.parametrize("name", list(INT_BOUNDS))
def test_int_bounds(name: str) -> None:
    lo, hi = INT_BOUNDS[name]
    assert getattr(Config(**{name: lo}), name) == lo
    assert getattr(Config(**{name: hi}), name) == hi
    for bad in (lo - 1, hi + 1, -1, -(10**20), 10**20):
        with pytest.raises(ValueError):
            Config(**{name: bad})


# ---------------------------------------------------------------- cross-field and others


def test_rto_min_above_rto_max() -> None:
    with pytest.raises(ValueError):
        Config(rto_min=2.0, rto_max=1.0)
    with pytest.raises(ValueError):
        Config(rto_min=61.0)  # above the default rto_max
    with pytest.raises(ValueError):
        Config(rto_max=0.1)  # below the default rto_min
    c = Config(rto_min=1.5, rto_max=1.5)
    assert c.rto_min == c.rto_max == 1.5


def test_congestion() -> None:
    assert Config(congestion="newreno").congestion == "newreno"
    assert Config(congestion="cubic").congestion == "cubic"
    for bad in ("bbr", "NewReno", "", "newreno "):
        with pytest.raises(ValueError):
            Config(congestion=bad)
    for wrong in (None, 1, b"newreno"):
        with pytest.raises(TypeError):
            Config(congestion=wrong)  # type: ignore[arg-type]


def test_frozen() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.mss = 1000  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.idle_timeout = 5.0  # type: ignore[misc]
    assert c.mss == 1400
    assert c.idle_timeout is None


def test_hashable_and_equal() -> None:
    assert hash(Config(mss=1000)) == hash(Config(mss=1000))
    assert Config(mss=1000) != Config(mss=1001)


def test_replace() -> None:
    base = Config()
    c = base.replace(mss=536, idle_timeout=10.0, msl=0.5)
    assert isinstance(c, Config)
    assert (c.mss, c.idle_timeout, c.msl) == (536, 10.0, 0.5)
    assert c.rto_max == base.rto_max
    # the original is untouched
    assert (base.mss, base.idle_timeout, base.msl) == (1400, None, 30.0)
    assert c.replace(idle_timeout=None).idle_timeout is None


def test_replace_validates() -> None:
    base = Config()
    with pytest.raises(ValueError):
        base.replace(mss=10)
    with pytest.raises(ValueError):
        base.replace(rto_min=100.0)
    with pytest.raises(ValueError):
        base.replace(ack_delay=math.nan)
    with pytest.raises(TypeError):
        base.replace(syn_retries=True)
    with pytest.raises(ValueError):
        base.replace(congestion="bbr")
    with pytest.raises(TypeError):
        base.replace(no_such_field=1)


def test_keys_are_checked_at_construction() -> None:
    from utcp import crypto

    private, public = crypto.generate_keypair()
    assert Config(secret_key=private).secure
    assert Config(server_key=public, allowed_keys=None).secure
    assert not Config().secure
    with pytest.raises(ValueError):
        Config(server_key="not base64!")
    with pytest.raises(ValueError):
        Config(secret_key="AAAA")  # base64, but 3 bytes
    with pytest.raises(TypeError):
        Config(allowed_keys=public)  # type: ignore[arg-type]  # a str, not a tuple
    with pytest.raises(TypeError):
        Config(server_key=b"x")  # type: ignore[arg-type]


def test_pmtu_probing_is_a_bool() -> None:
    assert Config().pmtu_probing is True
    assert Config(pmtu_probing=False).pmtu_probing is False
    with pytest.raises(TypeError):
        Config(pmtu_probing=1)  # type: ignore[arg-type]


def test_pacing_is_a_bool_and_on_by_default() -> None:
    assert Config().pacing is True
    assert Config(pacing=False).pacing is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(TypeError):
            Config(pacing=bad)  # type: ignore[arg-type]
