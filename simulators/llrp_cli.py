"""Command line of the simulated LLRP reader: pallets of tags through a portal, forever."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from simulators.llrp_population import epc_for
from simulators.llrp_reader import LlrpReaderSimulator


async def _main(args: argparse.Namespace) -> None:
    async with LlrpReaderSimulator(args.host, args.port, tick_s=args.tick) as sim:
        print(f"LLRP reader simulator on {args.host}:{sim.port}", flush=True)
        cycle = 0
        while True:
            start = sim.now() + 0.5
            epcs = [epc_for(cycle * args.tags + i) for i in range(args.tags)]
            sim.population.pallet(
                epcs, start, args.transit, reads_per_s=args.rate, antennas=(1, 2, 3, 4)
            )
            cycle += 1
            await asyncio.sleep(args.transit + args.gap)


def main() -> None:
    """``python -m simulators.llrp_cli``: pallets through a portal, forever."""
    parser = argparse.ArgumentParser(description="A simulated LLRP reader")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5084)
    parser.add_argument("--tags", type=int, default=40, help="tags per pallet")
    parser.add_argument("--rate", type=float, default=20.0, help="reads per second per tag")
    parser.add_argument("--transit", type=float, default=3.0, help="seconds a pallet is read")
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between pallets")
    parser.add_argument("--tick", type=float, default=0.01, help="report interval in seconds")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
