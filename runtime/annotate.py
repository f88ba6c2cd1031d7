"""``annotate(path, output, **settings)``: write edgecnn metadata into an .onnx file edgecnn did
not write (or replace what a file has), so ``run``, ``bench``, ``quantize`` and ``check`` need
no preprocessing flags for it. Needs the onnx package (never torch).

The settings are those of ``edgecnn.runtime.preprocess_settings`` (validated against the
graph there); flags not given keep the file's current values, or take the defaults. The file
is written atomically: a temporary file in the output's folder, then a rename; on any failure
nothing new is left. A file with external data keeps its weights: an output in the same
folder shares the data file(s), an output elsewhere gets a copy of them, written the same way
(both the .onnx and its data, or neither).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgecnn.errors import BadInput
from edgecnn.runtime.external_data import check_external_data
from edgecnn.runtime.metadata import ModelMetadata
from edgecnn.runtime.preprocess_settings import metadata_from_settings


@dataclass
class AnnotateResult:
    path: Path  # the file written
    metadata: ModelMetadata
    data_files: list[str]  # external data locations the file reads (copied when elsewhere)


def annotate(path: str | os.PathLike, output: str | os.PathLike | None = None, *,
             in_place: bool = False, **settings) -> AnnotateResult:
    """Validate ``settings`` against ``path``'s graph and write the file with the metadata to
    ``output`` (or over ``path`` itself with ``in_place``)."""
    from edgecnn import __version__
    from edgecnn.runtime import onnx_file

    if in_place and output is not None:
        raise BadInput("output and in_place exclude each other: write a new file or rewrite "
                       "this one")
    if not in_place and output is None:
        raise BadInput("output is needed (the file to write), or in_place to rewrite the file")
    source = onnx_file.check_model_file(path)
    target = source if in_place else _check_target(Path(output))
    locations = check_external_data(source)
    model = onnx_file.load_model(source, external_data=False)
    try:
        base = onnx_file.get_metadata(model, str(source))
    except BadInput:  # malformed metadata: annotating is how it gets replaced
        base = None
    inputs = {value.name: onnx_file.dims(value) for value in onnx_file.graph_inputs(model)}
    output_dims = onnx_file.dims(model.graph.output[0]) if model.graph.output else []
    metadata = metadata_from_settings(inputs, output_dims, settings, base=base,
                                      model=source.stem, source=str(source))
    if base is None:
        metadata.edgecnn_version = __version__
        metadata.opset = onnx_file.opset_version(model) or metadata.opset
        image = next(value for value in model.graph.input if value.name == metadata.input.name)
        if image.type.tensor_type.elem_type == 10:  # TensorProto.FLOAT16
            metadata.precision = "fp16"
    onnx_file.set_metadata(model, metadata)
    payload = model.SerializeToString()
    writes: list[tuple[Path, Callable[[Path], None]]] = []
    if not in_place and target.parent.resolve() != source.parent.resolve():
        writes = [(target.parent / location, _copier(data)) for location, data in locations.items()
                  if not _same_file(target.parent / location, data, target)]
    writes.append((target, lambda temporary: temporary.write_bytes(payload)))
    _write_together(writes, mode_of=source)
    return AnnotateResult(target, metadata, list(locations))


def _check_target(target: Path) -> Path:
    if target.is_dir():
        raise BadInput(f"output is a directory: {target} (give a file name ending in .onnx)")
    if target.exists() and not target.is_file():
        raise BadInput(f"output is not a regular file: {target}")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise BadInput(f"output folder does not exist: {folder}")
    return target


def _same_file(destination: Path, data: Path, target: Path) -> bool:
    """True when ``destination`` already holds ``data``'s bytes (nothing to copy); BadInput when
    it holds other bytes: another model's weights, which the copy would overwrite."""
    if not destination.exists():
        return False
    if destination.is_file() and filecmp.cmp(destination, data, shallow=False):
        return True
    raise BadInput(f"output folder {target.parent} already has a different "
                   f"{destination.name}, which writing {target.name} would replace; write it "
                   "to another folder or remove that file")


def _copier(data: Path) -> Callable[[Path], None]:
    return lambda temporary: shutil.copyfile(data, temporary)


def _write_together(writes: list[tuple[Path, Callable[[Path], None]]], mode_of: Path) -> None:
    """Write each (target, fill) to a temporary file beside its target, then rename them all into
    place (the last one last): on any failure the temporaries, and the targets already renamed
    that did not exist before, are removed, so the set is written whole or not at all."""
    temporaries: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    mode = stat.S_IMODE(mode_of.stat().st_mode)
    try:
        for target, fill in writes:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                            dir=target.parent)
            os.close(handle)
            temporaries.append((target, Path(name)))
            fill(Path(name))
            with open(name, "rb") as written:
                os.fsync(written.fileno())
            os.chmod(name, mode)
        for target, temporary in temporaries:
            existed = target.exists()
            os.replace(temporary, target)
            if not existed:
                placed.append(target)
    except BaseException:
        for target in placed:
            with contextlib.suppress(OSError):
                target.unlink()
        raise
    finally:
        for _, temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
