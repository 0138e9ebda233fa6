"""The lean config reader of `edge-central parity` never disagrees with the full loader.

It may decline (return None, and the full loader runs), but whatever it accepts, the full loader
accepts too, with the same DSN, password file and threshold. The fast path must also actually
be taken for the forms an operator writes, or the 100 ms target is lost silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.config import load_central_settings
from central.parity_config import read_parity_config
from gateway.settings import ConfigError

ODD_VALUES = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(
        [
            "5m",
            "5 m",
            "1.5h",
            "300",
            "",
            "30S",
            "10ms",
            "2w",
            "-1s",
            "1e3s",
            "x",
            "postgresql://h/d",
        ]
    ),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value in {float("inf"), float("-inf")}:
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(value)


def _full(path: Path) -> tuple[str, Path | None, float] | None:
    try:
        settings = load_central_settings(path)
    except ConfigError:
        return None
    return settings.database.dsn, settings.database.password_file, settings.parity.threshold


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.dictionaries(
        st.sampled_from(
            [
                ("database", "dsn"),
                ("database", "password_file"),
                ("database", "pool_size"),
                ("database", "retry_max"),
                ("database", "sslmode"),
                ("parity", "threshold"),
                ("parity", "limit"),
                ("central", "instance"),
                ("nonsense", "x"),
            ]
        ),
        ODD_VALUES,
        max_size=5,
    )
)
def test_whatever_the_lean_reader_accepts_the_full_loader_accepts_alike(
    tmp_path: Path, keys: dict[tuple[str, str], object]
) -> None:
    sections: dict[str, dict[str, object]] = {"central": {"instance": "a"}}
    for (section, key), value in keys.items():
        sections.setdefault(section, {})[key] = value
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items())
        for name, body in sections.items()
    )
    path = tmp_path / "c.toml"
    path.write_text(text)
    lean = read_parity_config(path)
    if lean is not None:
        assert _full(path) == (lean.dsn, lean.password_file, lean.threshold), text


@pytest.mark.parametrize(
    ("text", "threshold"),
    [
        ('[central]\ninstance = "a"\n', 300.0),
        ('[central]\ninstance = "a"\n[database]\ndsn = "postgresql://db/l"\n', 300.0),
        ('[central]\ninstance = "a"\n[parity]\nthreshold = 60\n', 60.0),
        ('[central]\ninstance = "a"\n[parity]\nthreshold = "5m"\n', 300.0),
        ('[central]\ninstance = "a"\n[parity]\nthreshold = 0.5\n', 0.5),
        ('[central]\ninstance = "a"\n[database]\nretry_max = "500ms"\npool_size = 8\n', 300.0),
    ],
)
def test_the_forms_operators_write_take_the_fast_path(
    tmp_path: Path, text: str, threshold: float
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    lean = read_parity_config(path)
    assert lean is not None
    assert lean.threshold == threshold
    assert _full(path) == (lean.dsn, lean.password_file, lean.threshold)


@pytest.mark.parametrize(
    "extra",
    [
        "[parity]\nthreshold = -1\n",
        "[parity]\nthreshold = true\n",
        "[parity]\nthreshold = nan\n",
        "[parity]\nthreshold = inf\n",
        '[parity]\nthreshold = "soon"\n',
        "[parity]\nthreshold = 1\nlimit = 2\n",
        '[database]\ndsn = ""\n',
        "[database]\ndsn = 5\n",
        "[database]\npool_size = 1\n",
        "[database]\npool_size = 101\n",
        "[database]\nretry_max = 0\n",
        "[database]\npassword_file = 3\n",
        '[database]\nsslmode = "require"\n',
        "[nonsense]\nx = 1\n",
        "logging = 3\n",
    ],
)
def test_what_the_full_loader_rejects_is_declined(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(extra + '[central]\ninstance = "a"\n')
    assert _full(path) is None
    assert read_parity_config(path) is None


@pytest.mark.parametrize(
    "text",
    ["", '[central]\ninstance = ""\n', '[central]\ninstance = "a b"\n', "[central\n", "\xff"],
)
def test_a_broken_central_section_or_file_is_declined(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(text.encode("latin-1"))
    assert _full(path) is None
    assert read_parity_config(path) is None


def test_the_example_config_takes_the_fast_path() -> None:
    from tests.support import ROOT  # noqa: PLC0415

    example = ROOT / "config" / "central.example.toml"
    lean = read_parity_config(example)
    assert lean is not None
    assert _full(example) == (lean.dsn, lean.password_file, lean.threshold)


def test_password_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pw").write_text("secret\n")
    path = tmp_path / "etc" / "c.toml"
    path.write_text('[central]\ninstance = "a"\n[database]\npassword_file = "pw"\n')
    lean = read_parity_config(path)
    assert lean is not None
    assert lean.password_file == (tmp_path / "etc" / "pw").resolve()
    assert lean.database_password() == "secret"
