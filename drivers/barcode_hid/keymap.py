"""Key events to text, the way the scanner's keyboard country setting meant them.

A keyboard-wedge scanner does not send characters: it presses keys, as if on a keyboard of the
country it is configured for. Decoding with the wrong layout silently turns a ``Z`` into a
``Y`` on a German box, so the layout is configuration, and a key with no character in it
decodes to ``UNMAPPED``, which the framer then drops as garbage (like line noise on a serial
port) instead of storing a wrong code. GS, which GS1 codes need between fields, arrives as
Ctrl+] or as Alt + 0 2 9 on the keypad; both decode to U+001D.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from drivers.barcode_hid.events import EV_KEY, KEY_PRESS, KEY_RELEASE, KEY_REPEAT, InputEvent

LayoutName = Literal["us", "de"]

UNMAPPED = "\x00"
GS = "\x1d"

KEY_TAB, KEY_ENTER, KEY_KPENTER, KEY_RIGHTBRACE = 15, 28, 96, 27
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTCTRL, KEY_RIGHTCTRL = 42, 54, 29, 97
KEY_LEFTALT, KEY_RIGHTALT, KEY_LEFTMETA, KEY_RIGHTMETA = 56, 100, 125, 126
KEY_CAPSLOCK, KEY_NUMLOCK, KEY_SCROLLLOCK = 58, 69, 70

KEYPAD = {71: "7", 72: "8", 73: "9", 75: "4", 76: "5", 77: "6", 79: "1", 80: "2", 81: "3", 82: "0"}
"""Keypad digits (NumLock on, as scanners assume); with Alt held they spell an Alt code."""
_KEYPAD_SYMBOLS = {55: "*", 74: "-", 78: "+", 83: ".", 98: "/"}
_IGNORED = frozenset({KEY_NUMLOCK, KEY_SCROLLLOCK, KEY_LEFTMETA, KEY_RIGHTMETA})
"""Keys some scanners press around Alt codes; they carry no character."""
_CONTROLLABLE = "@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_"
_COMBINING = {"\u00b4": "\u0301", "`": "\u0300", "^": "\u0302"}
"""Dead keys' accents (acute, grave, circumflex) to the combining marks that compose them."""


def _rows(*rows: tuple[int, str, str]) -> dict[int, tuple[str, str, str]]:
    """Keycode -> (plain, shifted, AltGr) from runs of consecutive keycodes."""
    keys: dict[int, tuple[str, str, str]] = {}
    for first, plain, shifted in rows:
        for offset, (low, high) in enumerate(zip(plain, shifted, strict=True)):
            keys[first + offset] = (low, high, "")
    keys[57] = (" ", " ", "")
    return keys


@dataclass(frozen=True)
class Layout:
    """One keyboard country: what each key types, which keys are dead, whether AltGr exists."""

    name: LayoutName
    keys: dict[int, tuple[str, str, str]]
    dead: frozenset[tuple[int, int]] = frozenset()
    """(keycode, level) pairs that are dead keys: they accent the next character."""
    altgr: bool = False
    """Whether Right Alt is AltGr (a third level) rather than a second Alt."""

    def char(self, code: int, level: int) -> str:
        """The character at ``level`` (0 plain, 1 Shift, 2 AltGr); '' if none."""
        if code in KEYPAD:
            return KEYPAD[code]
        if code in _KEYPAD_SYMBOLS:
            return "," if code == 83 and self.name == "de" else _KEYPAD_SYMBOLS[code]
        entry = self.keys.get(code)
        return entry[level] if entry else ""


def _with_altgr(
    keys: dict[int, tuple[str, str, str]], altgr: dict[int, str]
) -> dict[int, tuple[str, str, str]]:
    return {code: (low, high, altgr.get(code, "")) for code, (low, high, _) in keys.items()}


US = Layout(
    "us",
    _rows(
        (2, "1234567890-=", "!@#$%^&*()_+"),
        (16, "qwertyuiop[]", "QWERTYUIOP{}"),
        (30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
        (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
        (86, "<", ">"),
    ),
)
DE = Layout(
    "de",
    _with_altgr(
        _rows(
            (2, "1234567890ß\u00b4", '!"§$%&/()=?`'),
            (16, "qwertzuiopü+", "QWERTZUIOPÜ*"),
            (30, "asdfghjklöä^", "ASDFGHJKLÖÄ°"),
            (43, "#yxcvbnm,.-", "'YXCVBNM;:_"),
            (86, "<", ">"),
        ),
        {3: "²", 4: "³", 8: "{", 9: "[", 10: "]", 11: "}", 12: "\\", 16: "@", 18: "€", 27: "~"}
        | {50: "µ", 86: "|"},
    ),
    dead=frozenset({(13, 0), (13, 1), (41, 0)}),
    altgr=True,
)
LAYOUTS: dict[str, Layout] = {"us": US, "de": DE}


@dataclass
class KeyDecoder:
    """Turns key events into text, one event at a time, tracking modifiers like a console.

    Enter and keypad Enter decode to CR, Tab to TAB: the framer decides which ends a code.
    Autorepeats are ignored (counted in ``repeats``): a scanner never holds a key, so a repeat
    means the host lagged, and typing the character again would corrupt the code.
    """

    layout: Layout
    repeats: int = 0
    _held: set[str] = field(default_factory=set)
    _caps: bool = False
    _alt_digits: str = ""
    _dead: str = ""

    def feed(self, event: InputEvent) -> str:
        """The text ``event`` types: usually '' or one character."""
        if event.type != EV_KEY:
            return ""
        if event.value == KEY_REPEAT:
            self.repeats += 1
            return ""
        modifier = self._modifier(event.code)
        if modifier is not None:
            return self._modifier_change(modifier, pressed=event.value != KEY_RELEASE)
        return self._press(event.code) if event.value == KEY_PRESS else ""

    def _press(self, code: int) -> str:
        if code in _IGNORED:
            return ""
        if code == KEY_CAPSLOCK:
            self._caps = not self._caps
            return ""
        if "alt" in self._held:
            if code in KEYPAD:
                self._alt_digits += KEYPAD[code]
                return ""
            return UNMAPPED  # Alt + a letter is a menu shortcut, not text
        return self._key(code)

    def _modifier(self, code: int) -> str | None:
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            return "shift-l" if code == KEY_LEFTSHIFT else "shift-r"
        if code in (KEY_LEFTCTRL, KEY_RIGHTCTRL):
            return "ctrl-l" if code == KEY_LEFTCTRL else "ctrl-r"
        if code == KEY_RIGHTALT and self.layout.altgr:
            return "altgr"
        if code in (KEY_LEFTALT, KEY_RIGHTALT):
            return "alt"
        return None

    def _modifier_change(self, modifier: str, *, pressed: bool) -> str:
        if pressed:
            self._held.add(modifier)
            return ""
        self._held.discard(modifier)
        if modifier != "alt" or not self._alt_digits:
            return ""
        digits, self._alt_digits = self._alt_digits, ""
        return _alt_code(digits)

    def _key(self, code: int) -> str:
        held = self._held
        if code in (KEY_ENTER, KEY_KPENTER, KEY_TAB):
            text = "\t" if code == KEY_TAB else "\r"
            return self._undead() + text
        shift = bool(held & {"shift-l", "shift-r"})
        level = 2 if "altgr" in held else int(shift)
        char = self.layout.char(code, level)
        if held & {"ctrl-l", "ctrl-r"}:
            return _control(code, char)
        if not char:
            return UNMAPPED
        if (code, level) in self.layout.dead:
            pending = self._undead()
            self._dead = char
            return pending
        if self._caps and level < 2 and char.isalpha():
            char = char.swapcase()
        return self._compose(char)

    def _compose(self, char: str) -> str:
        accent, self._dead = self._dead, ""
        if not accent:
            return char
        if char == " ":
            return accent
        composed = unicodedata.normalize("NFC", char + _COMBINING[accent])
        return composed if len(composed) == 1 else accent + char

    def _undead(self) -> str:
        """A dead key followed by something it cannot accent types itself."""
        accent, self._dead = self._dead, ""
        return accent


def _control(code: int, char: str) -> str:
    """Ctrl + a key: the ASCII control character; Ctrl+] (the US key) is GS in every layout."""
    if code == KEY_RIGHTBRACE:
        return GS
    if char and char.upper() in _CONTROLLABLE:
        return chr(ord(char.upper()) & 0x1F)
    return UNMAPPED


def _alt_code(digits: str) -> str:
    """Alt + keypad digits, as Windows reads them: a leading 0 means cp1252, else cp437.

    Below 128 both are ASCII, control characters included, which is how Alt+029 carries GS.
    """
    number = int(digits)
    if number == 0 or number > 255:
        return UNMAPPED
    if number < 128:
        return chr(number)
    try:
        return bytes([number]).decode("cp1252" if digits.startswith("0") else "cp437")
    except UnicodeDecodeError:  # the five holes in cp1252
        return UNMAPPED
