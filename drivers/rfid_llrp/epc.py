"""Decodes SGTIN-96 and SSCC-96 EPCs into the GS1 keys central systems join on (GTIN, SSCC).

Per the GS1 EPC Tag Data Standard (TDS 2.x, sections 14.5.1 and 14.5.2). No maintained Python
library fits (the PyPI candidates are unmaintained since 2022), and the two 96-bit schemes that
warehouse pallets and cases carry are a partition table and a check digit, so they are here.
Anything else (other schemes, bad partitions, too many digits) decodes to nothing: the raw
``epc`` is always in the event, decoding only adds fields.
"""

from __future__ import annotations

SGTIN_96 = 0x30
SSCC_96 = 0x31

_SGTIN_PARTITIONS = {  # partition: (company bits, company digits, item bits, item digits)
    0: (40, 12, 4, 1),
    1: (37, 11, 7, 2),
    2: (34, 10, 10, 3),
    3: (30, 9, 14, 4),
    4: (27, 8, 17, 5),
    5: (24, 7, 20, 6),
    6: (20, 6, 24, 7),
}
_SSCC_PARTITIONS = {  # partition: (company bits, company digits, serial bits, serial digits)
    0: (40, 12, 18, 5),
    1: (37, 11, 21, 6),
    2: (34, 10, 24, 7),
    3: (30, 9, 28, 8),
    4: (27, 8, 31, 9),
    5: (24, 7, 34, 10),
    6: (20, 6, 38, 11),
}


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of ``digits`` (weights 3, 1, 3 ... from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


def _fields(value: int, bits: int, company_bits: int, ref_bits: int) -> tuple[int, int, int, int]:
    """Split filter, partition, company prefix and the reference after the 8-bit header."""
    filter_ = (value >> (bits - 11)) & 0x7
    company = (value >> (bits - 14 - company_bits)) & ((1 << company_bits) - 1)
    ref = (value >> (bits - 14 - company_bits - ref_bits)) & ((1 << ref_bits) - 1)
    return filter_, (value >> (bits - 14)) & 0x7, company, ref


def _sgtin(value: int) -> dict[str, str | int] | None:
    partition = (value >> 82) & 0x7
    if partition not in _SGTIN_PARTITIONS:
        return None
    c_bits, c_digits, i_bits, i_digits = _SGTIN_PARTITIONS[partition]
    filter_, _, company, item = _fields(value, 96, c_bits, i_bits)
    serial = value & ((1 << 38) - 1)
    company_text, item_text = str(company).zfill(c_digits), str(item).zfill(i_digits)
    if len(company_text) != c_digits or len(item_text) != i_digits:
        return None
    body = item_text[0] + company_text + item_text[1:]
    return {
        "epc_scheme": "sgtin-96",
        "gtin": body + gs1_check_digit(body),
        "serial": str(serial),
        "epc_filter": filter_,
    }


def _sscc(value: int) -> dict[str, str | int] | None:
    partition = (value >> 82) & 0x7
    if partition not in _SSCC_PARTITIONS:
        return None
    c_bits, c_digits, s_bits, s_digits = _SSCC_PARTITIONS[partition]
    filter_, _, company, serial_ref = _fields(value, 96, c_bits, s_bits)
    company_text, ref_text = str(company).zfill(c_digits), str(serial_ref).zfill(s_digits)
    if len(company_text) != c_digits or len(ref_text) != s_digits:
        return None
    body = ref_text[0] + company_text + ref_text[1:]
    return {"epc_scheme": "sscc-96", "sscc": body + gs1_check_digit(body), "epc_filter": filter_}


def decode_epc(epc_hex: str) -> dict[str, str | int]:
    """GS1 fields of a 96-bit SGTIN or SSCC EPC (hex text); empty for anything else."""
    if len(epc_hex) != 24:
        return {}
    try:
        value = int(epc_hex, 16)
    except ValueError:
        return {}
    header = value >> 88
    decoded = _sgtin(value) if header == SGTIN_96 else _sscc(value) if header == SSCC_96 else None
    return decoded or {}
