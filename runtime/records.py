"""The files `edgecnn run --output` writes: one complete line per image, .jsonl or .csv.

Lines are written whole (the finished line, unbuffered), so Ctrl-C leaves only complete
records, and a line a full disk takes part of is cut off again; a line cut short by a killed
process (SIGKILL, power loss) is dropped when the file is resumed. ``RecordWriter(path, task, top_k, resume=True)`` reads the images already
recorded (``done``) and appends after them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime.files import atomic_output, check_output_path

FORMATS = (".jsonl", ".csv")


def _name_bytes(error: UnicodeEncodeError) -> tuple[str | bytes, int]:
    """How a CSV holds what UTF-8 cannot: a file name's bytes as they are (the surrogates
    os.fsdecode made of them), any other lone surrogate as ``\\ud800``. JSON lines escape
    both ("\\udce9"), which json reads back as the same string."""
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeEncodeError:
        return codecs.lookup_error("backslashreplace")(error)


_NAME_BYTES = "edgecnn.record-names"
codecs.register_error(_NAME_BYTES, _name_bytes)


def check_record_path(path: str | os.PathLike) -> Path:
    """A writable .jsonl or .csv path (BadInput otherwise); nothing is created."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise BadInput(f"output must end in .jsonl or .csv, got {path}")
    return check_output_path(path)


def _csv_header(task: str, top_k: int) -> list[str]:
    if task == "classification":
        return ["image", "error", *(f"{what}{rank}" for rank in range(1, top_k + 1)
                                    for what in ("top", "p"))]
    return ["image", "error", "classes"]


def _csv_row(record: dict, task: str, top_k: int) -> list:
    row = [record["image"], record.get("error", "")]
    if "top_k" in record:
        for entry in record["top_k"]:
            row += [entry.get("label", entry["index"]), entry["probability"]]
    elif "classes" in record:
        row.append(";".join(f"{entry.get('label', entry['index'])}={entry['fraction']}"
                            for entry in record["classes"]))
    return row + [""] * (len(_csv_header(task, top_k)) - len(row))  # an error row: blanks


def _recorded(path: Path, task: str, top_k: int, csv_format: bool) -> tuple[set[str], int]:
    """The images an existing output holds, and the length of its complete lines. A file that
    is not the records of this kind of run is BadInput ("cannot resume ...")."""
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    # Image names are file names: bytes that are not UTF-8 come back as the same surrogates
    # os.fsdecode gives (see RecordWriter), so a resumed run matches them.
    text = complete.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")[:-1]  # records end in "\n" only; names may hold U+2028 and kin
    try:
        if csv_format:
            rows = list(csv.reader(lines))
            if rows and rows[0] != _csv_header(task, top_k):
                raise ValueError(f"its header is not the one this run writes "
                                 f"({','.join(_csv_header(task, top_k))})")
            return {row[0] for row in rows[1:] if row}, len(complete)
        images = set()
        for number, line in enumerate(lines, 1):
            try:
                images.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError, RecursionError):
                raise ValueError(f"line {number} is not a record of `edgecnn run`") from None
    except (ValueError, csv.Error) as error:
        raise BadInput(f"cannot resume {path}: {first_line(error)}") from None
    return images, len(complete)


class RecordWriter:
    """Appends records to ``path`` (.jsonl or .csv), one whole line each, straight to the file.
    A line the machine refuses part of (a full disk, a file-size limit) is cut off again
    before the error goes on: the file holds complete records only (``length`` bytes)."""

    def __init__(self, path: str | os.PathLike, task: str, top_k: int, resume: bool = False):
        self.path = check_record_path(path)
        self.task, self.top_k = task, top_k
        self.csv = self.path.suffix.lower() == ".csv"
        self.errors = _NAME_BYTES if self.csv else "backslashreplace"
        resuming = resume and self.path.is_file() and self.path.stat().st_size > 0
        self.done, self.length = (_recorded(self.path, task, top_k, self.csv) if resuming
                                  else (set(), 0))
        self.handle = open(self.path, "r+b" if resuming else "wb", buffering=0)
        if resuming:
            self.handle.truncate(self.length)  # a line a killed run cut short
            self.handle.seek(self.length)
        if self.csv and not self.length:
            try:
                self._write_line(_csv_line(_csv_header(task, top_k)))
            except OSError:  # not even the header: no empty file is left
                self.handle.close()
                self.path.unlink()
                raise

    def _write_line(self, line: str) -> None:
        data = memoryview(line.encode("utf-8", self.errors))
        try:
            while data:  # an unbuffered write may take part of it
                data = data[self.handle.write(data):]
        except OSError:
            self.handle.truncate(self.length)
            raise
        self.length += len(data.obj)

    def write(self, record: dict) -> None:
        self._write_line(_csv_line(_csv_row(record, self.task, self.top_k)) if self.csv
                         else json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.handle.close()


def _csv_line(row: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def mask_path(folder: str | os.PathLike, image: Path) -> Path:
    """Where an image's class map goes: its path mirrored under ``folder``, + ".png"."""
    parts = [part for part in image.parts[1 if image.is_absolute() else 0:] if part != ".."]
    return Path(folder, *parts[:-1], parts[-1] + ".png")


def write_mask(path: Path, class_map: np.ndarray) -> None:
    """A class map as a PNG of class indices: 8-bit for under 256 classes, else 16-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if class_map.max(initial=0) < 256 else np.uint16
    with atomic_output(path) as temporary:
        Image.fromarray(class_map.astype(dtype)).save(temporary, format="PNG")
