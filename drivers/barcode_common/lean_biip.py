"""biip, imported within the daemon's memory budget (issue 16).

biip costs the daemon two things it never uses, both dropped here, the one module that
imports it for the gateway (``gs1.py`` takes ``GS1Message`` from here):

- its GS1 Company Prefix table, read into nested dicts when imported: about 12 MB, a fifth of
  the daemon's idle memory, for a figure no event carries (we report the GTIN, SSCC, lot,
  expiry and serial, never the company prefix). Emptied, biip answers "prefix unknown" (None)
  for it, and nothing else in its parsing or checks depends on it
  (tests/unit/drivers/barcode_common/test_gs1.py); the daemon hands the freed heap back to the
  system once started (gateway.daemon.freeze_startup_objects).
- its ``__version__``, looked up with importlib.metadata when imported, which brings email,
  zipfile and csv along (~1 MB with pydantic's plugin loader, which the daemon also keeps out:
  gateway.cli._lean_daemon). While ``biip`` itself is imported, ``importlib.metadata`` is a
  stand-in whose ``version()`` finds nothing, so biip says ``__version__ = "unknown"``; the
  stand-in leaves ``sys.modules`` as soon as biip is in, and where importlib.metadata is
  already loaded (a plugin driver, tests) the real one is used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

_METADATA = "importlib.metadata"


class _NoPackageMetadataError(Exception):
    """The stand-in's ``PackageNotFoundError``: what biip catches when its version is unknown."""


def _unknown_version(name: str) -> str:
    raise _NoPackageMetadataError(name)


@contextmanager
def _without_package_metadata() -> Iterator[None]:
    """``importlib.metadata`` as a stand-in for the duration, unless it is loaded already."""
    if _METADATA in sys.modules:
        yield
        return
    stand_in = ModuleType(_METADATA)
    vars(stand_in).update(PackageNotFoundError=_NoPackageMetadataError, version=_unknown_version)
    sys.modules[_METADATA] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_METADATA) is stand_in:
            del sys.modules[_METADATA]


with _without_package_metadata():
    import biip

import biip.gs1_prefixes  # noqa: E402 - after the stand-in above, on purpose
from biip.gs1_messages import GS1Message  # noqa: E402

biip.gs1_prefixes._GS1_COMPANY_PREFIX_TRIE = {}  # noqa: SLF001

__all__ = ["GS1Message"]
