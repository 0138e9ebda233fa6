"""The peer for ``bench.modbus_poll --peer``: ThingsBoard IoT Gateway 3.8.5 on the same load.

Never a dependency: it is installed, when asked for, into a venv of its own
(``bench/.peer-venv``: ``thingsboard-gateway==3.8.5`` and the pymodbus 3.9.2 its Modbus
connector insists on, which it would otherwise pip-install at start-up). It runs as its own
process with its own Modbus connector polling the same simulators, publishing to a private
Mosquitto as if it were ThingsBoard (access token auth is just an MQTT user name).

Its config is the closest to ours it offers: per device one "wide range" timeseries entry
(``address = "0-99"``, one request of 100 input registers per poll, a key per register,
divided by 100), ``ON_CHANGE`` reporting, a 100 ms ``pollPeriod``. Its CPU is read from
``/proc/PID/stat`` (all its threads); its polls are counted by the simulators, which run in
this process for that (this process's CPU is not the figure here). Its idle cost is measured
too: the same gateway with the same connector and no device polled for the window.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from simulators.broker import MosquittoBroker
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_model import ConveyorModel

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "bench" / ".peer-venv"
PEER_PACKAGES = ("thingsboard-gateway==3.8.5", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio")
TICK = os.sysconf("SC_CLK_TCK")


def ensure_peer() -> Path:
    """The peer venv's python, creating the venv and installing the peer when missing."""
    python = PEER_VENV / "bin" / "python"
    probe = (
        "import thingsboard_gateway.version as v, pymodbus; print(v.VERSION, pymodbus.__version__)"
    )
    if python.exists():
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.split() == ["3.8.5", "3.9.2"]:
            return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True, stdout=sys.stderr
    )
    return python


SESSION_LIMITS = {
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "maxInflightMessages": 100,
    "maxPayloadSize": 65536,
}
"""What ThingsBoard answers to the gateway's ``getSessionLimits`` (no limits): until it has an
answer the peer polls its devices but publishes nothing."""


async def _count_messages(port: int, published: list[int]) -> None:
    """Play ThingsBoard's part the peer waits for, and count the telemetry it publishes."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("v1/#")
        async for message in client.messages:
            topic = str(message.topic)
            if topic.startswith("v1/devices/me/rpc/request/"):
                answer = topic.replace("/request/", "/response/")
                await client.publish(answer, json.dumps(SESSION_LIMITS))
            elif topic.startswith("v1/gateway/telemetry"):
                published[0] += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def write_config(
    where: Path, broker_port: int, ports: list[int], registers: int, rate: float
) -> None:
    """tb_gateway.json, logs.json (warnings only, to files) and modbus.json in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "checkConnectorsConfigurationInSeconds": 3600,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_CHANGE"},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1000000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    slaves = [
        {
            "host": "127.0.0.1",
            "port": port,
            "type": "tcp",
            "method": "socket",
            "unitId": 1,
            "deviceName": f"conveyor-{index:02d}",
            "deviceType": "conveyor",
            "timeout": 1,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 1,
            "pollPeriod": round(1000 / rate),
            "connectAttemptTimeMs": 500,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 1000,
            "reportStrategy": {"type": "ON_CHANGE"},
            "attributes": [],
            "timeseries": [
                {
                    "tag": "r${address}",
                    "type": "16uint",
                    "functionCode": 4,
                    "objectsCount": 1,
                    "address": f"0-{registers - 1}",
                    "maxRegistersPerRequest": 125,
                    "divider": 100,
                }
            ],
            "attributeUpdates": [],
            "rpc": [],
        }
        for index, port in enumerate(ports)
    ]
    (where / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    (where / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    (where / "logs.json").write_text(json.dumps(_logs(where / "logs"), indent=2))


def _logs(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    handler = {
        "class": "logging.FileHandler",
        "filename": str(folder / "peer.log"),
        "formatter": "plain",
        "level": "WARNING",
    }
    names = ("service", "connector", "converter", "tb_connection", "storage", "extension")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": handler},
        "loggers": {
            **{name: {"handlers": ["file"], "level": "WARNING"} for name in names},
            # pymodbus 3.9.2 warns "BinaryPayloadDecoder is deprecated" for every value the
            # connector decodes: an operator would silence that, so we do.
            "pymodbus": {"handlers": ["file"], "level": "ERROR", "propagate": False},
        },
        "root": {"handlers": ["file"], "level": "WARNING"},
    }


async def measure_peer(args: Any, tmp: Path) -> dict[str, Any]:  # noqa: ANN401 - argparse
    """The peer's CPU and polls over ``args.repeat`` windows, plus its idle cost."""
    python = ensure_peer()
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    sims = [
        ConveyorSimulator(model=ConveyorModel(seed=i, churn=args.churn), tcp_port=0)
        for i in range(args.devices)
    ]
    published = [0]
    listener = asyncio.create_task(_count_messages(broker.port, published))
    try:
        for sim in sims:
            await sim.start()
        busy = await _run_peer(
            python, tmp / "busy", broker.port, [s.port for s in sims], args, sims, published
        )
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for sim in sims:
            await sim.close()
    # Idle: the same gateway and connector, the devices gone (nothing answers at their ports).
    idle = await _run_peer(python, tmp / "idle", broker.port, [], args, [], [0])
    broker.stop()
    return {"busy": busy, "idle": idle}


async def _run_peer(
    python: Path,
    where: Path,
    broker_port: int,
    ports: list[int],
    args: Any,  # noqa: ANN401 - argparse
    sims: list[ConveyorSimulator],
    published: list[int],
) -> dict[str, Any]:
    write_config(where, broker_port, ports, args.registers, args.rate)
    env = {**os.environ, "TB_GW_CONFIG_DIR": str(where) + "/", "PYTHONUNBUFFERED": "1"}
    with (where / "stdout.log").open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            python,
            *("-m", "thingsboard_gateway.tb_gateway"),
            cwd=where,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    windows: list[dict[str, float]] = []
    try:
        await asyncio.sleep(args.peer_warmup)
        if proc.returncode is not None:
            raise RuntimeError(f"the peer exited ({proc.returncode}): see {where}/stdout.log")
        for _ in range(args.repeat):
            polls0, published0 = sum(s.requests for s in sims), published[0]
            wall0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            await asyncio.sleep(args.seconds)
            wall, cpu = time.monotonic() - wall0, cpu_seconds(proc.pid) - cpu0
            windows.append(
                {
                    "wall": wall,
                    "cpu": cpu,
                    "polls": sum(s.requests for s in sims) - polls0,
                    "published": published[0] - published0,
                }
            )
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    cpu_s = statistics.median(w["cpu"] for w in windows)
    polls = statistics.median(w["polls"] for w in windows)
    wall = statistics.median(w["wall"] for w in windows)
    result: dict[str, Any] = {
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall, 3),
        "cpu_percent_one_core": round(100 * cpu_s / wall, 1),
    }
    if ports:
        expected = len(ports) * args.rate * wall
        result |= {
            "polls_per_s": round(polls / wall, 1),
            "polls_served_fraction": round(polls / expected, 3),
            "mqtt_messages_per_s": round(
                statistics.median(w["published"] for w in windows) / wall, 1
            ),
            "values_per_cpu_s": round(polls * args.registers / cpu_s) if cpu_s else None,
            "values_per_cpu_s_windows": [
                round(w["polls"] * args.registers / w["cpu"]) for w in windows if w["cpu"]
            ],
        }
    shutil.rmtree(where / "logs", ignore_errors=True)
    return result
