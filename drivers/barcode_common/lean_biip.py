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
- ``importlib.resources``, through which biip reads its data files, and which brings zipfile
  and tempfile along (~1 MB). While biip is imported, ``importlib.resources`` is a stand-in
  whose ``files()`` reads the package's directory with pathlib, and reads the company prefix
  table as an empty one: biip then never decompresses and parses those 12 MB at all (start-up
  time, and the heap peak that ``malloc_trim`` had to hand back). Where the real module is
  loaded already, the table is emptied after the import, as before.
"""

from __future__ import annotations

import importlib.util
import lzma
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

_METADATA = "importlib.metadata"
_RESOURCES = "importlib.resources"
_COMPANY_PREFIXES = "_company_prefix_trie.json.lzma"
_EMPTY_TABLE = lzma.compress(b"{}")


class _NoPackageMetadataError(Exception):
    """The stand-in's ``PackageNotFoundError``: what biip catches when its version is unknown."""


def _unknown_version(name: str) -> str:
    raise _NoPackageMetadataError(name)


class _PackageFile:
    """The part of ``importlib.resources.files()``'s answer that biip uses: ``/`` and reads."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __truediv__(self, name: str) -> _PackageFile:
        return _PackageFile(self._path / name)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._path.read_text(encoding)

    def read_bytes(self) -> bytes:
        if self._path.name == _COMPANY_PREFIXES:
            return _EMPTY_TABLE
        return self._path.read_bytes()


def _package_files(package: str) -> _PackageFile:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(package)
    return _PackageFile(Path(spec.origin).parent)


def _stand_in(name: str, **attributes: object) -> ModuleType:
    module = ModuleType(name)
    vars(module).update(attributes)
    return module


@contextmanager
def _lean_imports() -> Iterator[None]:
    """``importlib.metadata`` and ``.resources`` as stand-ins, unless loaded already."""
    metadata = _stand_in(
        _METADATA, PackageNotFoundError=_NoPackageMetadataError, version=_unknown_version
    )
    resources = _stand_in(_RESOURCES, files=_package_files)
    stand_ins = {module.__name__: module for module in (metadata, resources)}
    stand_ins = {name: module for name, module in stand_ins.items() if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


with _lean_imports():
    import biip

import biip.gs1_prefixes  # noqa: E402 - after the stand-ins above, on purpose
from biip.gs1_messages import GS1Message  # noqa: E402

biip.gs1_prefixes._GS1_COMPANY_PREFIX_TRIE = {}  # noqa: SLF001

__all__ = ["GS1Message"]
