"""Review of the fifth performance round (issue 16): ``SourceRenderer`` where JSON has no form.

The property test in test_events.py draws types and data with ``st.text()``, which never
yields a lone surrogate, so the path its docstring names (a type orjson refuses, left to
``render_event``) is not reached there. These pin it: such a type or such data raises what
``render_event`` raises, at every render (nothing cached for it), and the types after it are
still rendered byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.events import SourceRenderer, new_id, render_event, rfc3339_now

SOURCE = "/site/gw/dock-1"


def expected_error(type_: str, data: dict[str, Any]) -> type[BaseException]:
    try:
        event_id, stamp = new_id()[0], rfc3339_now()
        render_event(event_id=event_id, source=SOURCE, type_=type_, time_=stamp, seq=1, data=data)
    except (TypeError, ValueError) as exc:
        return type(exc)
    raise AssertionError("render_event rendered it")


@pytest.mark.parametrize("type_", ["\ud800", "warehouse.\udfff.v1", "a\ud83db"])
def test_a_type_json_cannot_carry_raises_as_render_event_does_every_time(type_: str) -> None:
    renderer = SourceRenderer(SOURCE)
    error = expected_error(type_, {"code": "A"})
    for _ in range(3):
        render = renderer.render_for(new_id()[0], type_, rfc3339_now(), {"code": "A"})
        with pytest.raises(error):
            render(1)
    assert renderer._middles == {}, "nothing kept for a type with no JSON form"
    event_id, stamp = new_id()[0], rfc3339_now()
    ok = renderer.render_for(event_id, "warehouse.barcode.scanned.v1", stamp, {"code": "A"})(7)
    assert ok == render_event(
        event_id=event_id,
        source=SOURCE,
        type_="warehouse.barcode.scanned.v1",
        time_=stamp,
        seq=7,
        data={"code": "A"},
    )


@pytest.mark.parametrize(
    "data",
    [{"code": "\ud800"}, {"\udc00": 1}, {"nested": ["ok", {"x": "a\udfffb"}]}, {1: "\ud800"}],
)
def test_data_json_cannot_carry_raises_as_render_event_does_under_a_kept_type(
    data: dict[Any, Any],
) -> None:
    type_ = "warehouse.barcode.scanned.v1"
    renderer = SourceRenderer(SOURCE)
    renderer.render_for(new_id()[0], type_, rfc3339_now(), {"code": "A"})(1)  # type now kept
    assert type_ in renderer._middles
    error = expected_error(type_, data)
    with pytest.raises(error):
        renderer.render_for(new_id()[0], type_, rfc3339_now(), data)(2)
