"""The files `edgecnn run --output` writes: one complete line per image, .jsonl or .csv.

Lines are written whole (the finished line, unbuffered), so Ctrl-C leaves only complete
records, and a line a full disk takes part of is cut off again; a line cut short by a killed
process (SIGKILL, power loss) is dropped when the file is resumed.
``RecordWriter(path, RunShape(task, top_k, ...), resume=True)`` reads the images already
recorded (``done``), refuses records of another model or top_k, and appends after them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime.files import (
    atomic_output, check_output_path, discard, replace_with, temporary_beside,
)

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


_CLASS_SHARE = re.compile(r"(.*?)=(\d+(?:\.\d*)?(?:e-?\d+)?)(?:;|$)")  # a segmentation CSV cell


@dataclass(frozen=True)
class RunShape:
    """What the records of one run look like, so that ``--resume`` adds to its own records
    only: the task, ``top_k`` (the CSV's columns), ``entries`` (the classes a classification
    record lists: top_k, or fewer classes; None: not known) and the model's ``labels``."""

    task: str
    top_k: int
    entries: int | None = None
    labels: Sequence[str] | None = None

    def mismatch(self, record: dict) -> str | None:
        """Why ``record`` is not one this run writes (another model's, another top_k's)."""
        if "error" in record:
            return None
        listed = record.get("top_k" if self.task == "classification" else "classes")
        if not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed):
            return f"it is not a {self.task} record"
        if self.task == "classification" and self.entries not in (None, len(listed)):
            return (f"it lists {len(listed)} classes where this run, top_k={self.top_k}, lists "
                    f"{self.entries}")
        names = [entry.get("label") for entry in listed]
        if self.labels and not all(name in self.labels for name in names):
            return "its classes are not named by this model's labels"
        if not self.labels and any(name is not None for name in names):
            return "its classes are named by labels, and this model is without labels"
        return None

    def csv_record(self, row: list[str]) -> dict:
        """A CSV row as the record it was written from (as far as ``mismatch`` reads it)."""
        if len(row) > 1 and row[1]:
            return {"image": row[0], "error": row[1]}
        if self.task == "classification":  # a class listed has its probability ("" may be a label)
            names = [name for name, share in zip(row[2::2], row[3::2]) if share != ""]
        else:  # "label=fraction;...": a label may hold "=" and ";" itself
            names = [found[1] for found in _CLASS_SHARE.finditer(row[2] if len(row) > 2 else "")]
        key = "label" if self.labels or not all(name.isdigit() for name in names) else "index"
        return {"image": row[0], ("top_k" if self.task == "classification" else "classes"):
                [{key: name} for name in names]}


def _recorded(path: Path, shape: RunShape, csv_format: bool) -> tuple[set[str], int]:
    """The images an existing output holds, and the length of its complete lines. A file that
    is not the records of this kind of run is BadInput ("cannot resume ...")."""
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    # Image names are file names: bytes that are not UTF-8 come back as the same surrogates
    # os.fsdecode gives (see RecordWriter), so a resumed run matches them.
    text = complete.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")[:-1]  # records end in "\n" only; names may hold U+2028 and kin
    header = _csv_header(shape.task, shape.top_k)
    try:
        if csv_format:
            rows = list(csv.reader(lines))
            if rows and rows[0] != header:
                raise ValueError(f"its header is not the one this run, top_k={shape.top_k}, "
                                 f"writes ({','.join(header)})")
            records = [shape.csv_record(row) for row in rows[1:] if row]
        else:
            records = []
            for number, line in enumerate(lines, 1):
                try:
                    records.append(json.loads(line))
                    if not isinstance(records[-1]["image"], str):
                        raise TypeError
                except (ValueError, KeyError, TypeError, RecursionError):
                    raise ValueError(f"line {number} is not a record of `edgecnn run`") from None
        for number, record in enumerate(records, 1):
            if (why := shape.mismatch(record)) is not None:
                raise ValueError(f"record {number} is not one this run writes ({why}): another "
                                 "model, or another top_k, wrote it; write a new output")
    except (ValueError, csv.Error) as error:
        raise BadInput(f"cannot resume {path}: {first_line(error)}") from None
    return {record["image"] for record in records}, len(complete)


class RecordWriter:
    """Appends records to ``path`` (.jsonl or .csv), one whole line each, straight to the file.
    A line the machine refuses part of (a full disk, a file-size limit) is cut off again
    before the error goes on: the file holds complete records only (``length`` bytes).

    Until the first record scored, failed records are held (up to ``HELD_FAILURES``, then
    written), and a new output is written beside ``path`` and moved onto it at that first
    record, or at ``close``: a run that stops on bad input, or in which every image fails,
    leaves an earlier file as it was (``close(keep_held=False)``). The move replaces a
    symbolic link rather than writing through it; ``resume`` refuses one."""

    HELD_FAILURES = 10_000

    def __init__(self, path: str | os.PathLike, shape: RunShape, resume: bool = False):
        self.path = check_record_path(path)
        self.task, self.top_k = shape.task, shape.top_k
        self.csv = self.path.suffix.lower() == ".csv"
        self.errors = _NAME_BYTES if self.csv else "backslashreplace"
        if resume and self.path.is_symlink():
            raise BadInput(f"resume continues a regular file, and {self.path} is a symbolic link")
        resuming = resume and self.path.is_file() and self.path.stat().st_size > 0
        self.done, self.length = (_recorded(self.path, shape, self.csv) if resuming
                                  else (set(), 0))
        self.handle, self.temporary, self.held, self.scored = None, None, [], False
        if resuming:
            self.handle = open(self.path, "r+b", buffering=0)
            self.handle.truncate(self.length)  # a line a killed run cut short
            self.handle.seek(self.length)

    @property
    def opened(self) -> bool:
        return self.handle is not None

    def _open(self) -> None:
        self.temporary = temporary_beside(self.path)
        self.handle = open(self.temporary, "wb", buffering=0)
        if self.csv:
            self._write_line(_csv_line(_csv_header(self.task, self.top_k)))

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
        self.held.append(record)
        self.scored = self.scored or "error" not in record
        if self.scored or len(self.held) >= self.HELD_FAILURES:
            self._flush()
        if self.scored and self.temporary is not None:
            replace_with(self.temporary, self.path)
            self.temporary = None

    def _flush(self) -> None:
        if self.handle is None:
            self._open()
        held, self.held = self.held, []
        for record in held:
            self._write_line(_csv_line(_csv_row(record, self.task, self.top_k)) if self.csv
                             else json.dumps(record, ensure_ascii=False) + "\n")

    def close(self, keep_held: bool = True) -> None:
        """Close the file, with the failed records still held written (``keep_held``: a run
        that ended, or was interrupted) or dropped, and a new file left unmoved (a run that
        failed: the output stays as it was)."""
        try:
            if keep_held and self.held:
                self._flush()
        finally:
            if self.handle is not None:
                self.handle.close()
            if self.temporary is not None:
                if keep_held and self.length:  # not a file without one whole line
                    replace_with(self.temporary, self.path)
                else:
                    discard(self.temporary)
                self.temporary = None


def _csv_line(row: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def mask_path(folder: str | os.PathLike, image: Path) -> Path:
    """Where an image's class map goes: its path mirrored under ``folder``, + ".png"."""
    parts = [part for part in image.parts[1 if image.is_absolute() else 0:] if part != ".."]
    return Path(folder, *parts[:-1], parts[-1] + ".png")


MAX_MASK_CLASSES = 2**16  # a 16-bit PNG's class indices


def write_mask(path: Path, class_map: np.ndarray) -> None:
    """A class map as a PNG of class indices: 8-bit for under 256 classes, else 16-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if class_map.max(initial=0) < 256 else np.uint16
    with atomic_output(path) as temporary:
        Image.fromarray(class_map.astype(dtype)).save(temporary, format="PNG")
