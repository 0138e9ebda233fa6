"""Review of the orjson confirms (issue 15): no verdict lost or doubled between payloads.

``confirm_payloads`` now joins orjson pieces with ``,`` and counts the bytes itself (UTF-8 as
sent, ``json.dumps`` pieces with their spaces for what orjson refuses). Any mix of verdicts,
1- to 4-byte characters and characters JSON escapes, any batch size: every verdict comes out
once and in order, every payload is taken whole by the gateway's parser, and a payload is cut
only when the next verdict would not fit in ``MAX_PAYLOAD`` bytes or ``most`` verdicts.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from central.ledger import _verdict_json, confirm_payloads, confirm_verdict
from gateway.commands import MAX_CONFIRMS, MAX_PAYLOAD, MAX_REASON, parse_confirms

CHARS = ["a", "\u00e9", "\u20ac", "\U0001f600", '"', "\\", "\x7f"]


@st.composite
def verdicts(draw: st.DrawFn) -> dict[str, object]:
    """A verdict with an id of up to 128 characters and, when rejected, a long reason."""
    event_id = draw(st.sampled_from(CHARS)) * draw(st.integers(1, 128))
    if draw(st.booleans()):
        return confirm_verdict(event_id, "accepted", None)
    reason = draw(st.sampled_from(CHARS)) * draw(st.integers(0, MAX_REASON))
    return confirm_verdict(event_id, "rejected", reason)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    batch=st.lists(verdicts(), max_size=700),
    most=st.sampled_from([1, 7, 250, MAX_CONFIRMS]),
)
def test_each_verdict_is_sent_once_in_order_in_payloads_a_gateway_takes(
    batch: list[dict[str, object]], most: int
) -> None:
    payloads = list(confirm_payloads(batch, most=most))
    sent: list[object] = []
    for index, (payload, count) in enumerate(payloads):
        assert 1 <= count <= most and len(payload) <= MAX_PAYLOAD
        parsed = parse_confirms(payload)
        assert parsed.refused == 0 and len(parsed.confirms) == count
        taken = json.loads(payload)
        assert len(taken) == count
        sent.extend(taken)
        if index + 1 < len(payloads):  # cut only when the next one would not fit
            following = _verdict_json(batch[len(sent)])
            assert count == most or len(payload) + 1 + len(following) > MAX_PAYLOAD
    assert sent == batch


def test_a_payload_of_exactly_max_payload_bytes_is_sent_whole_and_one_more_byte_is_cut() -> None:
    """The byte arithmetic at the boundary, where random sizes rarely land."""
    for slack, expected in ((-1, [63]), (0, [63]), (1, [62, 1])):
        batch = [confirm_verdict(f"e{i:02}", "rejected", "r" * 1000) for i in range(62)]
        used = 2 + sum(len(_verdict_json(v)) for v in batch) + len(batch)  # brackets, commas
        bare = len(_verdict_json(confirm_verdict("e62", "rejected", "")))
        batch.append(confirm_verdict("e62", "rejected", "r" * (MAX_PAYLOAD + slack - used - bare)))
        payloads = list(confirm_payloads(batch))
        assert [n for _, n in payloads] == expected, slack
        assert [json.loads(p) for p, _ in payloads] == [batch[:n] for n in expected[:1]] + (
            [batch[62:]] if slack > 0 else []
        )
        if slack <= 0:
            assert len(payloads[0][0]) == MAX_PAYLOAD + slack, "the arithmetic hit the boundary"
