"""Valid barcode contents for the scanner simulator: EAN-13, GS1-128 and SSCC, with check digits.

Generated codes must pass the gateway's GS1 checks, or a load test would measure the error
path instead of the happy one. Each generator returns ``(code_text, aim_id)`` as a scanner with
AIM identifiers enabled would send it (minus the terminator).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import string
from collections.abc import Callable, Iterator

GS = "\x1d"

Generator = Callable[[random.Random], tuple[str, str]]


def check_digit(payload: str) -> str:
    """Compute the GS1 mod-10 check digit of ``payload`` (weights 3,1,3,... from the right)."""
    total = sum(int(digit) * (3 if i % 2 == 0 else 1) for i, digit in enumerate(reversed(payload)))
    return str((10 - total % 10) % 10)


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _with_check(payload: str) -> str:
    return payload + check_digit(payload)


def ean13(rng: random.Random) -> tuple[str, str]:
    """Make an EAN-13 with a valid check digit, GS1 prefix 400-440 (Germany) to look real."""
    return _with_check(str(rng.randint(400, 440)) + _digits(rng, 9)), "]E0"


def gtin14(rng: random.Random) -> str:
    """Make a GTIN-14: indicator digit + an EAN-13 payload + check digit."""
    return _with_check(str(rng.randint(0, 8)) + str(rng.randint(400, 440)) + _digits(rng, 9))


def gs1_128(rng: random.Random) -> tuple[str, str]:
    """Make GTIN (01), lot (10) and expiry (17): the lot is variable-length, so GS ends it."""
    lot = "".join(
        rng.choice(string.ascii_uppercase + string.digits) for _ in range(rng.randint(3, 10))
    )
    expiry = dt.date(2026, 1, 1) + dt.timedelta(days=rng.randint(0, 3 * 365))
    return f"01{gtin14(rng)}10{lot}{GS}17{expiry:%y%m%d}", "]C1"


def sscc(rng: random.Random) -> tuple[str, str]:
    """Make an SSCC (00): extension digit + company prefix + serial + check digit."""
    return "00" + _with_check(str(rng.randint(0, 9)) + _digits(rng, 16)), "]C1"


def mixed(rng: random.Random) -> tuple[str, str]:
    """Pick one of the others, weighted like a dock: mostly cartons, some pallets and retail."""
    generator = rng.choices([ean13, gs1_128, sscc], weights=[3, 5, 2])[0]
    return generator(rng)


GENERATORS: dict[str, Generator] = {
    "ean13": ean13,
    "gs1-128": gs1_128,
    "sscc": sscc,
    "mixed": mixed,
}


def generate(
    kind: str, rng: random.Random | None = None, count: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``count`` codes of ``kind`` (forever if None); a seeded ``rng`` repeats them."""
    make = GENERATORS[kind]
    source = rng or random.Random()
    produced = (make(source) for _ in itertools.count())
    return produced if count is None else itertools.islice(produced, count)
