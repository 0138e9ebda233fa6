"""What the driver sends: ROSpec, reader config and GPO writes, checked by an independent parser."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from sllurp.llrp import LLRPMessage

from drivers.rfid_llrp import messages
from drivers.rfid_llrp.config import RfidLlrpConfig
from drivers.rfid_llrp.plan import ReaderMismatchError, plan_from_capabilities
from simulators import llrp_wire

VECTORS = Path(__file__).resolve().parents[3] / "vectors" / "llrp"
CAPS = LLRPMessage(
    msgbytes=(VECTORS / "caps_impinj_get_reader_capabilities_response.bin").read_bytes()
).msgdict["GET_READER_CAPABILITIES_RESPONSE"]
BASE = {"id": "p", "driver": "rfid-llrp", "host": "h", "antennas": [1, 2]}


def plan(**extra):
    return plan_from_capabilities(RfidLlrpConfig.model_validate({**BASE, **extra}), CAPS)


def test_gpi_triggered_rospec_round_trips():
    """GPI start/stop triggers use parameter type 181 (sllurp's own encoder says 180)."""
    p = plan(
        start_trigger={"type": "gpi", "gpi_port": 1},
        stop_trigger={"type": "gpi", "gpi_port": 1, "timeout_ms": 5000},
        report_every_tags=8,
        report_every_ms=250,
    )
    raw = messages.add_rospec(42, p)
    kind, length, msg_id = struct.unpack_from("!HII", raw)
    assert (kind & 0x3FF, length, msg_id) == (messages.ADD_ROSPEC, len(raw), 42)
    spec = llrp_wire.parse_rospec(raw[10:])
    assert (spec.rospec_id, spec.start, spec.start_gpi) == (1, "gpi", (1, True))
    assert (spec.stop, spec.stop_gpi, spec.stop_ms) == ("gpi", (1, False), 5000)
    assert (spec.antennas, spec.report_n, spec.report_ms) == ([1, 2], 8, 250)


def test_immediate_rospec_and_power_choice():
    """Default: immediate start, no stop; power is the highest table entry <= power_dbm."""
    p = plan(power_dbm=20.1)
    assert (p.power_dbm, p.start_gpi) == (20.0, None)
    spec = llrp_wire.parse_rospec(messages.add_rospec(1, p)[10:])
    assert (spec.start, spec.stop) == ("immediate", "none")
    assert (
        plan().power_dbm
        == max(
            e["TransmitPowerValue"]
            for e in CAPS["RegulatoryCapabilities"]["UHFBandCapabilities"][
                "TransmitPowerLevelTableEntry"
            ]
        )
        / 100
    )


def test_gpo_write_and_keepalive_in_set_reader_config():
    """GPOWriteData and the keepalive interval decode as the reader would read them."""
    raw = messages.gpo_write(7, 3, True)
    assert llrp_wire.parse_gpo_writes(raw[10:]) == [(3, True)]
    assert llrp_wire.parse_gpo_writes(messages.gpo_write(8, 3, False)[10:]) == [(3, False)]
    config = messages.set_reader_config(9, plan(keepalive_s=0.5))
    assert llrp_wire.parse_keepalive_ms(config[10:]) == 500


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"antennas": [1, 2, 3]}, "antennas 1..2 only"),
        ({"power_dbm": 35.0}, "outside this reader's range"),
        ({"gpo_good": 5}, "GPO 5"),
        ({"start_trigger": {"type": "gpi", "gpi_port": 9}}, "GPI 9"),
        ({"reader_mode": 77}, "reader_mode 77"),
    ],
)
def test_reader_mismatch_is_explained(extra, message):
    """What the recorded Impinj (2 antennas, 4 GPIO each) cannot do is refused in words."""
    with pytest.raises(ReaderMismatchError, match=message):
        plan(**extra)
