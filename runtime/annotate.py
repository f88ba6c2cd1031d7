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

import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgecnn.errors import BadInput
from edgecnn.runtime.external_data import check_external_data, refuse_overwriting
from edgecnn.runtime.describe import value_type
from edgecnn.runtime.files import atomic_model_output, check_output_path
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
    if in_place and source.is_symlink():  # os.replace would put the file where the link is
        raise BadInput(f"in_place rewrites a regular file, and {source} is a symbolic link (to "
                       f"{source.resolve()}): annotate that file, or write output=FILE")
    target = source if in_place else check_output_path(output)
    locations = check_external_data(source)
    if target.resolve() != source.resolve():  # -o the file itself rewrites it, like in_place
        refuse_overwriting(source, [target])
    model = onnx_file.load_model(source, external_data=False)
    try:
        base = onnx_file.get_metadata(model, str(source))
    except BadInput:  # malformed metadata: annotating is how it gets replaced
        base = None
    values = onnx_file.graph_inputs(model)
    inputs = {value.name: onnx_file.dims(value) for value in values}
    types = {value.name: value_type(value) for value in values}
    output_dims = onnx_file.dims(model.graph.output[0]) if model.graph.output else []
    metadata = metadata_from_settings(inputs, output_dims, settings, base=base,
                                      model=source.stem, source=str(source), input_types=types)
    if base is None:
        metadata.edgecnn_version = __version__
        metadata.opset = onnx_file.opset_version(model) or metadata.opset
    onnx_file.set_metadata(model, metadata)
    payload = model.SerializeToString()
    copies = {}
    if not in_place and target.parent.resolve() != source.parent.resolve():
        _check_copyable(locations, source, target)
        copies = {location: data for location, data in locations.items()
                  if not _same_file(target.parent / location, data, target)}
    with atomic_model_output(target) as work:
        for location, data in copies.items():
            (work / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, work / location)
        (work / target.name).write_bytes(payload)
    return AnnotateResult(target, metadata, list(locations))


def _check_copyable(locations: dict[str, Path], source: Path, target: Path) -> None:
    """BadInput unless each data file can be copied beside ``target`` under its own name: a
    location is the file's to choose, and one in a sub-folder (".ssh/authorized_keys") would
    write there, inside the output folder; one named like the output would be overwritten by
    the model itself."""
    for location in locations:
        place = PurePosixPath(location.replace("\\", "/"))  # "./w.data" is w.data, beside it
        if str(place.parent) != ".":
            raise BadInput(f"{source}'s external data {location!r} is in a sub-folder; annotate "
                           "copies only the data files beside the model: write the output into "
                           f"{source.parent}, or use in_place")
        if place.name == target.name:
            raise BadInput(f"{source}'s external data is named {location!r}, the output's own "
                           "name: give the output another name")


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
