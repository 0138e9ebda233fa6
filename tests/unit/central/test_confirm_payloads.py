"""Central's confirms are cut to what a gateway takes: 500 verdicts, 64 KiB (issue 18, finding 4).

Checked against the gateway's own parser: a payload it would refuse whole loses every verdict in
it, and a broker drops one over the gateway's Maximum Packet Size without a word.
"""

from __future__ import annotations

import json
import uuid

import pytest

from central.ledger import confirm_payloads, confirm_verdict
from gateway.commands import MAX_CONFIRMS, MAX_PAYLOAD, MAX_REASON, parse_confirms


@pytest.mark.parametrize(
    ("count", "reason"),
    [
        (1, None),
        (MAX_CONFIRMS, None),
        (MAX_CONFIRMS + 1, None),
        (1000, None),  # the leader's RECONFIRM_MAX, once sent as one message
        (500, "unknown SKU '" + "9" * 185 + "'"),  # the SKU rule's longest reason: ~130 KB
        (300, "r" * MAX_REASON),
        (500, "\u00e9\u20ac" * (MAX_REASON // 2)),  # non-ASCII: counted in bytes as sent
    ],
)
def test_every_payload_is_taken_whole_by_a_gateway(count: int, reason: str | None) -> None:
    verdicts = [
        confirm_verdict(str(uuid.uuid4()), "accepted" if reason is None else "rejected", reason)
        for _ in range(count)
    ]
    payloads = list(confirm_payloads(verdicts))
    taken: list[dict[str, object]] = []
    for index, (payload, n) in enumerate(payloads):
        assert len(payload) <= MAX_PAYLOAD
        if index + 1 < len(payloads):  # cut only when the next verdict would not fit
            following = json.dumps(
                verdicts[len(taken) + n], separators=(",", ":"), ensure_ascii=False
            )
            assert n == MAX_CONFIRMS or len(payload) + 1 + len(following.encode()) > MAX_PAYLOAD
        parsed = parse_confirms(payload)
        assert parsed.refused == 0 and len(parsed.confirms) == n
        taken.extend(json.loads(payload))
    assert taken == verdicts, "every verdict once, in order"
    assert sum(n for _, n in payloads) == count


def test_a_smaller_batch_size_is_kept() -> None:
    verdicts = [confirm_verdict(f"e{i}", "accepted", None) for i in range(25)]
    assert [n for _, n in confirm_payloads(verdicts, most=10)] == [10, 10, 5]
    assert list(confirm_payloads([])) == []


def test_a_verdict_orjson_refuses_is_written_by_the_standard_encoder() -> None:
    verdicts = [confirm_verdict("a", "rejected", "lone \ud800 surrogate")]
    (payload, n), *more = confirm_payloads(verdicts)
    assert not more and n == 1
    assert json.loads(payload) == verdicts
