"""Key events decoded to text with the US and DE layouts, modifiers, GS and Alt codes."""

from __future__ import annotations

import string

import pytest

from drivers.barcode_hid.events import EV_KEY, EV_MSC, EV_SYN, InputEvent
from drivers.barcode_hid.keymap import (
    DE,
    KEY_CAPSLOCK,
    KEY_LEFTALT,
    KEY_LEFTCTRL,
    KEY_RIGHTBRACE,
    LAYOUTS,
    UNMAPPED,
    US,
    KeyDecoder,
)
from tests.unit.drivers.barcode_hid.keyboard import Typist

GS = "\x1d"
KEY_A, KEY_Y, KEY_Z, KEY_9, KEY_ESC, KEY_KP0, KEY_KP1, KEY_KP2, KEY_KP9 = (
    30, 21, 44, 10, 1, 82, 79, 80, 73,
)  # fmt: skip


def decode(layout, events):
    decoder = KeyDecoder(LAYOUTS[layout] if isinstance(layout, str) else layout)
    return "".join(decoder.feed(event) for event in events), decoder


def typed(layout, text, **options):
    return decode(layout, Typist(layout, **options).text(text))[0]


def keys(*steps):
    """Key transitions (code, value) as bare EV_KEY events."""
    return [InputEvent(0, 0, EV_KEY, code, value) for code, value in steps]


def test_us_round_trips_printable_ascii():
    """Every printable ASCII character typed on a US layout decodes to itself."""
    text = string.ascii_letters + string.digits + string.punctuation + " "
    assert typed("us", text) == text


def test_de_round_trips_its_characters():
    """German letters, symbols and AltGr characters decode to themselves on the DE layout."""
    text = "ZYzy äöüÄÖÜß §$%&/()=?*'#_:;<>|@€{[]}\\~µ²³°" + string.digits
    assert typed("de", text) == text


def test_layout_matters():
    """The same keys mean different text: a US-configured scanner read as DE swaps Y and Z."""
    events = Typist("us").text("ZY-1")
    assert decode("us", events)[0] == "ZY-1"
    assert decode("de", events)[0] == "YZß1"


@pytest.mark.parametrize("layout", ["us", "de"])
@pytest.mark.parametrize("gs", ["ctrl", "alt"])
def test_gs_both_ways(layout, gs):
    """GS arrives as Ctrl+] or as Alt + keypad 0 2 9, on either layout, and stays GS."""
    assert typed(layout, f"0109501101020917{GS}10AB", gs=gs) == f"0109501101020917{GS}10AB"


def test_de_ctrl_altgr_bracket_is_gs():
    """On DE, ] is AltGr+9: Ctrl with that is GS too."""
    events = keys((KEY_LEFTCTRL, 1), (100, 1), (KEY_9, 1), (KEY_9, 0), (100, 0), (KEY_LEFTCTRL, 0))
    assert decode("de", events)[0] == GS


def test_ctrl_letters_are_control_characters():
    """Ctrl+A is SOH and Ctrl+] (the US key) is GS; Ctrl + a digit has no character."""
    events = keys(
        (KEY_LEFTCTRL, 1), (KEY_A, 1), (KEY_A, 0), (KEY_RIGHTBRACE, 1), (KEY_RIGHTBRACE, 0),
        (KEY_9, 1), (KEY_9, 0), (KEY_LEFTCTRL, 0),
    )  # fmt: skip
    assert decode("us", events)[0] == "\x01" + GS + UNMAPPED


@pytest.mark.parametrize(
    ("digits", "expected"),
    [("029", GS), ("0029", GS), ("65", "A"), ("0228", "ä"), ("132", "ä"), ("0129", UNMAPPED)],
)
def test_alt_codes(digits, expected):
    """Alt + keypad digits: below 128 ASCII; with a leading 0 cp1252, without cp437."""
    pad = {
        "0": KEY_KP0,
        "1": KEY_KP1,
        "2": KEY_KP2,
        "9": KEY_KP9,
        "6": 77,
        "5": 76,
        "8": 72,
        "3": 81,
        "4": 75,
    }
    steps = [(KEY_LEFTALT, 1)]
    for digit in digits:
        steps += [(pad[digit], 1), (pad[digit], 0)]
    assert decode("us", keys(*steps, (KEY_LEFTALT, 0)))[0] == expected


def test_terminators_and_keypad():
    """Enter and keypad Enter type CR, Tab TAB; keypad digits type digits (NumLock on)."""
    assert decode("us", keys((28, 1), (96, 1), (15, 1), (KEY_KP1, 1), (83, 1)))[0] == "\r\r\t1."
    assert decode("de", keys((83, 1)))[0] == ","


def test_autorepeat_and_other_event_types_ignored():
    """Autorepeats are counted, not typed; MSC_SCAN and SYN carry no text."""
    events = [
        InputEvent(0, 0, EV_MSC, 4, 0x70004),
        *keys((KEY_A, 1), (KEY_A, 2), (KEY_A, 2), (KEY_A, 0)),
        InputEvent(0, 0, EV_SYN, 0, 0),
    ]
    text, decoder = decode("us", events)
    assert text == "a"
    assert decoder.repeats == 2


def test_unknown_key_is_unmapped():
    """A key with no character (Esc) decodes to UNMAPPED, so the framer drops the frame."""
    assert decode("us", keys((KEY_ESC, 1), (KEY_ESC, 0)))[0] == UNMAPPED


def test_capslock_inverts_letters_only():
    """With CapsLock on, letters flip case and digits do not."""
    events = keys((KEY_CAPSLOCK, 1), (KEY_CAPSLOCK, 0), (KEY_A, 1), (KEY_9, 1))
    events += keys((KEY_CAPSLOCK, 1), (KEY_A, 1))
    assert decode("us", events)[0] == "A9a"


def test_de_dead_keys():
    """DE dead keys accent the next letter, type themselves before a space or a terminator."""
    circumflex, acute = (41, 1), (13, 1)
    events = keys(circumflex, (18, 1), circumflex, (57, 1), acute, (KEY_A, 1), acute, (28, 1))
    events += keys(circumflex, (KEY_9, 1))
    assert decode(DE, events)[0] == "ê^á\u00b4\r^9"


def test_key_codes_match_linux():
    """The keymap's key codes are the kernel's (checked against python-evdev's table)."""
    ecodes = pytest.importorskip("evdev.ecodes")
    assert ecodes.KEY_RIGHTBRACE == KEY_RIGHTBRACE
    assert ecodes.KEY_LEFTALT == KEY_LEFTALT
    assert ecodes.KEY_Y == KEY_Y
    for code, (plain, _, _) in US.keys.items():
        name = ecodes.KEY[code]
        name = name[0] if isinstance(name, list) else name
        if plain.isalnum():
            assert name == f"KEY_{plain.upper()}"
    assert DE.keys[KEY_Z][0] == "y"
