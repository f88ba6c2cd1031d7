"""What the command line's text becomes before the API sees it: lists of numbers, KEY=VALUE
model options, and the values of flags that take several (`--mean 0.485 0.456 0.406`).
The API checks the values themselves; these only read them."""

from __future__ import annotations

import re

from edgecnn.errors import BadInput


def parse_numbers(text: str | None, flag: str, kind: type = float) -> list | None:
    """'0.5', '0.485,0.456,0.406', '0.485 0.456 0.406' (or '64x48' for ints) -> numbers; the
    API checks how many it takes. BadInput naming ``flag`` when a part is not a number."""
    if text is None:
        return None
    separators = r"[x,\s]+" if kind is int else r"[,\s]+"
    parts = [part for part in re.split(separators, text.strip()) if part]
    try:
        numbers = [kind(part) for part in parts]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise BadInput(f"{flag} takes {what} (comma- or space-separated), got {text!r}") from None
    if not numbers:
        raise BadInput(f"{flag} needs a value, got {text!r}")
    return numbers


def parse_model_options(pairs: list[str] | None) -> dict:
    """``["upsample=bilinear", "paper_lrn=true"]`` -> ``{"upsample": "bilinear", "paper_lrn": True}``.

    Values become bool (true/false), int or float where they read as one, else stay strings;
    the exporter and the model's builder check the keys (BadInput naming them).
    """
    options = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key.isidentifier():
            raise BadInput(f"--option takes KEY=VALUE, got {pair!r}")
        options[key] = _option_value(text.strip())
    return options


def _option_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_input_size(text: str | None) -> list[int] | None:
    """'64', '64x48', '64,48' or '64 48' -> [64] or [64, 48]. main() joins `--input-size 64 48`."""
    return parse_numbers(text, "--input-size", int)


# Options that take several values (`--mean 0.485 0.456 0.406`), and the most each takes (None:
# any number); click options take a fixed count, so main() joins the values into one token.
MULTI_VALUE_FLAGS = {"--input-size": 2, "--mean": None, "--std": None}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def join_multi_value_flags(argv: list[str]) -> list[str]:
    """`--mean 0.485 0.456 0.406` -> `--mean 0.485,0.456,0.406` (and `--input-size H W`, `--std`);
    parse_numbers reads the joined value, as it reads one written with commas."""
    joined, index = [], 0
    while index < len(argv):
        token = argv[index]
        joined.append(token)
        index += 1
        if token in MULTI_VALUE_FLAGS:
            most, values = MULTI_VALUE_FLAGS[token], []
            while (index < len(argv) and _is_number(argv[index])
                   and (most is None or len(values) < most)):
                values.append(argv[index])
                index += 1
            if values:
                joined.append(",".join(values))
    return joined
