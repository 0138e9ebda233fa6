"""A broker Receive Maximum of 2 (Mosquitto ``max_inflight_messages 2``), found by the second
review: gmqtt then has one packet id. The pump and the other publishes (checkpoint, status, a
replay) used to ask for two, so a checkpoint while an event was in flight raised OverflowError
and tore the session down, again and again. Now they share the one id: the pump keeps a claimed
batch until an id frees up, other publishes wait for one.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.gateway.test_small_broker_window import run_with_window


async def test_broker_receive_maximum_two_does_not_churn_sessions(tmp_path: Path) -> None:
    await run_with_window(tmp_path, inflight=2, replay=False)


async def test_broker_receive_maximum_two_with_a_replay_running(tmp_path: Path) -> None:
    await run_with_window(tmp_path, inflight=2, replay=True)
