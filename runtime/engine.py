"""``Engine``: one exported model on one onnxruntime session, ready for arrays or images.

    from edgecnn.runtime import Engine
    engine = Engine("resnet18.onnx", provider="auto", threads=2)
    engine.providers                      # ['CPUExecutionProvider'] (what actually runs)
    engine.run(batch)                     # {'logits': array}; checks dtype, rank, shape, NaN/Inf
    engine.predict("cat.jpg", top_k=5)    # [('tabby', 0.61), ...] preprocessed from metadata
    engine.scores_are_probabilities       # it ends in Softmax or Sigmoid: no softmax in top-k

Torch-free. ``run`` is thread-safe (onnxruntime sessions are), so one Engine can serve several
threads. Models using the ``ai.edgecnn::DeformConv2d`` custom op get its decomposed lowering at
load time when the installed onnxruntime has no DeformConv kernel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput, require_count
from edgecnn.runtime import providers as provider_lib
from edgecnn.runtime.metadata import ModelMetadata, fixed_size
from edgecnn.runtime.model_file import (
    check_model_file, metadata_props, no_outputs, probability_op,
)
from edgecnn.runtime.postprocess import class_rows
from edgecnn.runtime.preprocess_settings import (
    check_raw_pixels, check_settings, integer_type, metadata_from_settings,
)
from edgecnn.runtime.session import open_session

PREDICT_CHUNK = 16  # images per run() call when the batch axis is dynamic
# The most one array edgecnn builds for a model may take (a padded fixed batch, bench's random
# inputs): a fixed batch axis of 10**9 in a file is a typo or hostile, not a workload.
MAX_FEED_BYTES = 4 * 2**30
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
# Element types onnxruntime hands no numpy array out of, nor takes one in for.
NO_NUMPY_TYPES = ("bfloat16", "float8", "int4", "float4", "int2")
MAX_NUMPY_AXES = 64 if int(np.__version__.split(".")[0]) >= 2 else 32  # numpy 1.x: 32


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (ints, or names/None for dynamic axes), dtype."""

    name: str
    shape: tuple
    dtype: np.dtype | None  # None for types numpy has no name for

    @property
    def fixed_axes(self) -> tuple[tuple[int, int], ...]:
        return tuple((axis, size) for axis, size in enumerate(self.shape)
                     if fixed_size(size) is not None)

    def describe(self) -> str:
        dims = ", ".join(str(fixed_size(size) or size or "?") for size in self.shape)
        return f"{self.dtype} [{dims}]"

    @classmethod
    def from_node_arg(cls, arg) -> "TensorSpec":
        dtype = ORT_DTYPES.get(arg.type)
        return cls(arg.name, tuple(arg.shape), None if dtype is None else np.dtype(dtype))


FIXED_BATCH_ADVICE = "export the model with a dynamic (or smaller) batch axis"


def check_feed_bytes(arrays: Mapping[str, tuple[Sequence[int], object]], advice: str,
                     prefix: str = "") -> None:
    """BadInput when the inputs ``arrays`` ({name: (shape, dtype)}) edgecnn is to build would
    take more than MAX_FEED_BYTES together: "<prefix>input 'x' [shape] dtype would take N GiB,
    more than ...; <advice>"."""
    total = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in arrays.values())
    if total <= MAX_FEED_BYTES:
        return
    described = ", ".join(f"{name!r} {list(shape)} {np.dtype(dtype).name}"
                          for name, (shape, dtype) in arrays.items())
    raise BadInput(f"{prefix}input{'s' if len(arrays) > 1 else ''} {described} would take "
                   f"{total / 2**30:.1f} GiB, more than the {MAX_FEED_BYTES // 2**30} GiB edgecnn "
                   f"allocates for one batch; {advice}")


class Engine:
    """An onnxruntime session on one model, with input checks, preprocessing and top-k.

    provider: "auto" (TensorRT -> CUDA -> CPU among installed; without a GPU, OpenVINO for an
        int8 model of plain convolutions: providers.auto_order), "cpu", "cuda", "tensorrt",
        "openvino[:DEVICE][:bf16|f16]", an onnxruntime provider name, or a list of names /
        (name, options) pairs.
    threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).
    fallback: when an explicitly requested provider is missing, warn and use what is there
        (False: raise BadInput naming the installed providers).
    device_id, fp16: the CUDA / TensorRT GPU and TensorRT fp16 kernels.
    cache_dir: where TensorRT and OpenVINO keep what they compiled, for the next process
        (building a TensorRT engine takes minutes).
    tf32: let CUDA round convolution inputs to TF32 (onnxruntime's default; False: full fp32).
    check_finite: report NaN/Inf inputs in ``run`` as BadInput.
    preprocessing: how images become the input, for a file without edgecnn metadata (or to
        replace some of its fields): a dict of the settings in
        ``edgecnn.runtime.preprocess_settings.SETTINGS`` (input_name, input_size, layout, color,
        scale, mean, std, crop_fraction, task, labels), validated against the graph.
    """

    def __init__(self, path: str | os.PathLike, provider: provider_lib.ProviderRequest = "auto",
                 threads: int | None = None, fallback: bool = True, *, device_id: int = 0,
                 fp16: bool = False, cache_dir: str | os.PathLike | None = None,
                 tf32: bool = True, check_finite: bool = True, session_options=None,
                 preprocessing: Mapping | None = None):
        self.path = check_model_file(path)
        opened = open_session(self.path, provider, threads=threads, fallback=fallback,
                              options=session_options, device_id=device_id, fp16=fp16,
                              cache_dir=cache_dir, tf32=tf32)
        self.session, self.deform_lowering_swapped = opened.session, opened.deform_lowering_swapped
        self.providers: list[str] = opened.providers
        # read from the file: onnxruntime's map raises on an entry that is not UTF-8
        self.metadata: ModelMetadata | None = ModelMetadata.from_props(
            metadata_props(self.path), str(self.path))
        for kind, args in (("input", self.session.get_inputs()),
                           ("output", self.session.get_outputs())):
            for arg in args:  # what no numpy array can be handed in or out as
                if any(name in arg.type for name in NO_NUMPY_TYPES):
                    raise BadInput(f"{self.path}: {kind} {arg.name!r} is {arg.type}, which numpy "
                                   "has no type for, and edgecnn passes numpy arrays in and out; "
                                   f"re-export the model with a float {kind} there")
                if len(arg.shape) > MAX_NUMPY_AXES:
                    raise BadInput(f"{self.path}: {kind} {arg.name!r} has {len(arg.shape)} axes, "
                                   f"more than the {MAX_NUMPY_AXES} a numpy array holds")
        self.inputs = [TensorSpec.from_node_arg(arg) for arg in self.session.get_inputs()]
        self.outputs = [TensorSpec.from_node_arg(arg) for arg in self.session.get_outputs()]
        if not self.outputs:
            raise no_outputs(self.path)
        for spec in self.inputs:  # onnxruntime takes no array there: a bad export
            if zero := next((axis for axis, size in enumerate(spec.shape) if size == 0), None):
                raise BadInput(f"{self.path}: input {spec.name!r} declares axis {zero} of size 0 "
                               f"({spec.describe()}); re-export it with a fixed size or a "
                               "dynamic axis there")
        graph = {spec.name: spec.shape for spec in self.inputs}
        types = {spec.name: spec.dtype.name for spec in self.inputs if spec.dtype is not None}
        if check_settings(preprocessing):  # validated against the graph, like the metadata
            self.metadata = metadata_from_settings(
                graph, self.outputs[0].shape, preprocessing, base=self.metadata,
                model=self.path.stem, source=str(self.path), input_types=types)
        elif self.metadata is not None:  # before anything is allocated from the metadata's shape
            self.metadata.check_graph(graph, self.outputs[0].shape, str(self.path))
            if integer := integer_type(types.get(self.metadata.input.name)):
                check_raw_pixels(self.metadata.input, integer, str(self.path))
        self.check_finite = check_finite
        self._output_names = [spec.name for spec in self.outputs]
        # a graph that ends in Softmax or Sigmoid gives probabilities: predict reports them as
        # they are ("Softmax", "Sigmoid" or None)
        self.probability_op = probability_op(self.path, self._output_names[0],
                                             self.outputs[0].shape)
        self._checks = [InputCheck(spec) for spec in self.inputs]

    @property
    def scores_are_probabilities(self) -> bool:
        return self.probability_op is not None

    def __repr__(self) -> str:
        model = self.metadata.model if self.metadata else "no metadata"
        return f"Engine({str(self.path)!r}, {model}, providers={self.providers})"

    @property
    def precision(self) -> str | None:
        """'fp32' | 'fp16' | 'int8' from the metadata (None without edgecnn metadata)."""
        return self.metadata.precision if self.metadata else None

    # -- arrays -------------------------------------------------------------------------------

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on one array (single-input models) or a {name: array} dict.

        Returns {output name: array}. Raises BadInput (a ValueError) "expected ..., got ..."
        when an input has the wrong dtype, rank or size on a fixed axis, and when it holds
        NaN or Inf (unless check_finite=False).
        """
        feed = self._feed(inputs)
        for check in self._checks:
            check(feed[check.name], self.check_finite)
        return dict(zip(self._output_names, self.session.run(self._output_names, feed)))

    def _feed(self, inputs) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            if len(self.inputs) != 1:
                names = ", ".join(spec.name for spec in self.inputs)
                raise BadInput(f"expected a dict of {len(self.inputs)} inputs ({names}), got one array")
            return {self.inputs[0].name: inputs}
        if not isinstance(inputs, Mapping):
            raise BadInput(f"expected a numpy array or a dict of them, got {type(inputs).__name__}")
        expected = {spec.name for spec in self.inputs}
        if set(inputs) != expected:
            raise BadInput(f"expected inputs {sorted(expected)}, got {sorted(inputs)}")
        return inputs

    # -- images -------------------------------------------------------------------------------

    def predict(self, images, top_k: int = 5, *, batch_size: int | None = None,
                crop_fraction: float | None = None, labelled: bool = True):
        """Classify or segment images (paths, PIL images, HxWxC uint8 arrays, or lists of them).

        Preprocessing comes from the model's metadata (see edgecnn.runtime.preprocess);
        ``crop_fraction`` overrides the metadata's center-crop share.
        Classification: a list of (label or class index, probability), most likely first
        (``labelled=False``: always the class index).
        Segmentation: an (H, W) int64 map of argmax classes at the model's input size (the
        center-cropped view the model saw, not the original image size).
        One image in -> one result; a list in -> a list of results.
        Batches run in chunks of ``batch_size`` (default: the model's fixed batch, else 16).
        """
        from edgecnn.runtime import postprocess, preprocess

        metadata = self.require_metadata()
        single = preprocess.is_single_image(images)
        items = preprocess.as_image_list(images)
        if not items:
            raise BadInput("no images given")
        if metadata.task not in ("classification", "segmentation"):
            raise BadInput(f"predict does not know task {metadata.task!r}; use run()")
        if metadata.task == "classification":
            require_count("top_k", top_k, optional=False)
        require_count("batch_size", batch_size)
        self.image_input()
        chunk = self.fixed_batch or batch_size or PREDICT_CHUNK
        scores = np.concatenate([
            self.scores(preprocess.preprocess_images(items[start:start + chunk], metadata.input,
                                                     crop_fraction=crop_fraction))
            for start in range(0, len(items), chunk)])
        if metadata.task == "classification":
            results = postprocess.top_k(scores, top_k, metadata.labels if labelled else None,
                                        probabilities=self.scores_are_probabilities)
        else:
            results = postprocess.class_maps(scores)
        return results[0] if single else results

    def image_input(self) -> TensorSpec:
        """The input images go to (the metadata's); BadInput when the model needs others too."""
        spec = self._input_spec(self.require_metadata().input.name)
        if len(self.inputs) > 1:
            others = ", ".join(repr(other.name) for other in self.inputs if other is not spec)
            raise BadInput(f"predict feeds images to {spec.name!r} only, and the model also needs "
                           f"{others}; call Engine.run with a dict of all its inputs")
        return spec

    @property
    def fixed_batch(self) -> int | None:
        """The image input's batch size when the graph fixes it, else None."""
        shape = self._input_spec(self.require_metadata().input.name).shape
        return fixed_size(shape[0]) if shape else None

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The first output for a preprocessed float32 batch of any length (a fixed batch axis
        takes it in chunks of that size, the last zero-padded and its padding rows dropped); a
        classifier's as (N, classes), also where the graph gives (N, classes, 1, 1)."""
        scores = self._first_output(batch)
        name = self._output_names[0]
        if scores.dtype.kind not in "fiu":  # bool, strings: no probabilities to read
            what = "strings" if scores.dtype.kind in "OUS" else f"{scores.dtype} values"
            raise BadInput(f"{self.path}: its first output {name!r} holds {what}, not scores")
        if scores.ndim > 1 and scores.shape[1] == 0:
            raise BadInput(f"{self.path}: its first output {name!r} has 0 classes "
                           f"(shape {list(scores.shape)})")
        declared = self.outputs[0].shape
        if (scores.ndim > 1 and len(declared) > 1 and isinstance(declared[1], int)
                and declared[1] > 0 and scores.shape[1] != declared[1]):  # labels index by it
            raise BadInput(f"{self.path}: its first output {name!r} computes {scores.shape[1]} "
                           f"classes where the file declares {declared[1]} (shape "
                           f"{list(scores.shape)}, declared {list(declared)})")
        rows = len(scores) if scores.ndim else 0
        if rows != len(batch):  # a graph that reshapes (or reduces) the batch away
            raise BadInput(f"{self.path}: its first output {name!r} has "
                           f"{rows} rows for {len(batch)} image(s): its first axis is "
                           "not the batch, which edgecnn needs (one row of scores per image)")
        return class_rows(scores) if self.metadata.task == "classification" else scores

    def _first_output(self, batch: np.ndarray) -> np.ndarray:
        spec, fixed = self.image_input(), self.fixed_batch
        if not fixed:
            return self.run({spec.name: batch.astype(spec.dtype, copy=False)})[self._output_names[0]]
        check_feed_bytes({spec.name: ((fixed, *batch.shape[1:]), spec.dtype or batch.dtype)},
                         FIXED_BATCH_ADVICE, prefix="the fixed batch of ")
        outputs = []
        for start in range(0, len(batch), fixed):
            chunk = batch[start:start + fixed]
            count = len(chunk)
            if count < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - count, *chunk.shape[1:]),
                                                        chunk.dtype)])
            chunk = chunk.astype(spec.dtype, copy=False)
            outputs.append(self.run({spec.name: chunk})[self._output_names[0]][:count])
        return np.concatenate(outputs)

    def require_metadata(self) -> ModelMetadata:
        if self.metadata is None:
            raise BadInput(f"{self.path} has no edgecnn metadata, so its preprocessing is "
                           "unknown: give it (Engine(preprocessing={...}); edgecnn run --mean "
                           "--std --input-size --layout --color --scale --task --crop-fraction "
                           "--labels --input-name), write it into the file with `edgecnn "
                           "annotate`, or call Engine.run with an array")
        return self.metadata

    def _input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise BadInput(f"metadata names input {name!r}, the model has "
                       f"{[spec.name for spec in self.inputs]}")


class InputCheck:
    """Engine.run's checks of one input; a shape seen before costs one set lookup."""

    MAX_SHAPES = 64  # remembered accepted shapes (dynamic axes can produce many)

    def __init__(self, spec: TensorSpec):
        self.spec, self.name, self.dtype = spec, spec.name, spec.dtype
        self.rank, self.fixed = len(spec.shape), spec.fixed_axes
        self.accepted: set[tuple] = set()  # adding under the GIL is thread-safe

    def __call__(self, array, check_finite: bool) -> None:
        if not isinstance(array, np.ndarray):
            raise BadInput(f"input {self.name!r}: expected a numpy array, got {type(array).__name__}")
        if (array.dtype != self.dtype and self.dtype is not None) or array.shape not in self.accepted:
            self._check_dtype_and_shape(array)
        if check_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            raise BadInput(f"input {self.name!r}: expected finite values, got {nan} NaN and {inf} "
                           f"Inf of {array.size}")

    def _check_dtype_and_shape(self, array: np.ndarray) -> None:
        shape = array.shape
        if ((array.dtype != self.dtype and self.dtype is not None) or len(shape) != self.rank
                or any(shape[axis] != size for axis, size in self.fixed)):
            raise BadInput(f"input {self.name!r}: expected {self.spec.describe()}, got "
                           f"{array.dtype} {list(shape)}")
        if len(self.accepted) < self.MAX_SHAPES:
            self.accepted.add(shape)
