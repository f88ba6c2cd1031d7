"""Dataset runs scaled out on an existing Ray cluster with Ray Data (``pip install
'edgecnn[ray]'``): `edgecnn run ... --ray ADDRESS` and `edgecnn evaluate ... --ray ADDRESS`.

    predict.run_files("resnet18.onnx", ["photos/"], ray="ray://head:10001", output="preds.jsonl")

The paths become a dataset (``ray.data.from_items``); ``Dataset.map_batches`` hands batches of
them to a pool of ``EngineActor`` actors, each holding one Engine (the model loads once per
actor). An actor decodes and preprocesses its paths with edgecnn's own decoder
(``stream.stream_scores``, the local run's pipeline) rather than ``ray.data.read_images``, whose
decoding (no EXIF orientation, its own mode conversions and resizing) would give other
tensors, hence other scores. The records come back in input order (``preserve_order``) as the
local run builds them (``predict._record``) and go through the local run's writer, block by
block (``iter_batches``). Ray is imported inside the functions: the module imports without it.
Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime.engine import Engine
from edgecnn.runtime.stream import DEFAULT_BATCH, Outcome, stream_scores, streaming_session_options

INSTALL_HINT = "pip install 'edgecnn[ray]'"
LOCAL = "local"  # `--ray local`: a Ray instance on this machine, started for the run
CPUS_PER_ACTOR = 1  # each actor's onnxruntime threads default to this too


def import_ray():
    """The ray module (with Ray Data), or BadInput naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BadInput(f"ray needs Ray Data, which this install does not have ({INSTALL_HINT})"
                       ) from None
    return ray


def _check_reachable(address: str, timeout: float = 10) -> None:
    """BadInput unless a HOST:PORT address (``ray://`` or not) accepts a connection: Ray itself
    retries an address nobody answers on for many minutes. ``auto`` is Ray's to find."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise BadInput(f"ray: cannot reach {address}: {first_line(error)}") from None


@contextlib.contextmanager
def connected(address: str | None = LOCAL):
    """Ray, connected for the block. An instance already initialized in this process is used
    as it is (and left running); otherwise ``address`` (``auto``, ``ray://host:10001``, or
    ``local``/None: a new local instance with this machine's cores) is connected to, and
    disconnected from at the end."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        options = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address not in (None, LOCAL):
            _check_reachable(address)
        try:
            if address in (None, LOCAL):
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise BadInput(f"ray: cannot connect to {address}: {first_line(error)}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class EngineActor:
    """A ``map_batches`` callable class: one Engine per actor, opened in ``__init__``.

    A batch ``{"path": [...]}`` becomes ``{"record": [JSON line, ...]}``, the records `run
    --output` writes (``top_k`` given), or ``{"error": [...], "scores": (N, classes)}`` for
    `evaluate` (and ``"path"``; ``top_k`` None; an unreadable image has its error and zero scores)."""

    def __init__(self, model: str, engine_options: Mapping, stream_options: Mapping,
                 task: str, top_k: int | None, labels: Sequence[str] | None):
        self.engine = Engine(model, **engine_options, session_options=streaming_session_options())
        self.stream_options = dict(stream_options)
        self.task, self.top_k, self.labels = task, top_k, labels

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgecnn.runtime.predict import _record

        paths = [Path(str(path)) for path in batch["path"]]
        outcomes = list(stream_scores(self.engine, paths, batch=len(paths),
                                      **self.stream_options))
        if self.top_k is not None:
            probabilities = self.engine.scores_are_probabilities
            records = [_record(outcome, self.task, self.top_k, self.labels, probabilities)
                       for outcome in outcomes]
            return {"record": np.array([json.dumps(record, ensure_ascii=False)
                                        for record in records], dtype=object)}
        classes = self.engine.outputs[0].shape[1]
        return {"path": np.array([str(path) for path in paths], dtype=object),
                "error": np.array([outcome.error or "" for outcome in outcomes], dtype=object),
                "scores": np.stack([np.zeros(classes, np.float32) if outcome.scores is None
                                    else outcome.scores.astype(np.float32)
                                    for outcome in outcomes])}


def _blocks(address: str | None, model, paths: Sequence[Path], *, engine_options: Mapping,
            batch: int | None, workers: int | None, max_pixels: int | None, task: str,
            top_k: int | None, labels) -> Iterator[dict]:
    """The actors' output for ``paths``, block by block, in input order."""
    if not paths:  # e.g. --resume with every image already recorded
        return
    with connected(address) as ray, warnings.catch_warnings():
        # Ray Data's own deprecations of its settings, and its INFO lines, are not the user's
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        context = ray.data.DataContext.get_current()
        logger = logging.getLogger("ray.data")
        saved = (context.execution_options.preserve_order, context.enable_progress_bars,
                 logger.level)
        context.execution_options.preserve_order, context.enable_progress_bars = True, False
        logger.setLevel(logging.ERROR)
        try:
            cpus = int(ray.cluster_resources().get("CPU", CPUS_PER_ACTOR))
            options = {"threads": CPUS_PER_ACTOR, **{k: v for k, v in engine_options.items()
                                                     if v is not None}}
            dataset = ray.data.from_items([{"path": str(path)} for path in paths])
            dataset = dataset.map_batches(
                EngineActor, batch_size=batch or DEFAULT_BATCH, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=max(1, cpus // CPUS_PER_ACTOR)),
                num_cpus=CPUS_PER_ACTOR,
                fn_constructor_kwargs={
                    "model": str(Path(model).resolve()), "engine_options": options,
                    "stream_options": {"workers": workers or 1, "max_pixels": max_pixels},
                    "task": task, "top_k": top_k, "labels": labels})
            yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved[:2]
            logger.setLevel(saved[2])


def ray_records(address: str | None, model, paths: Sequence[Path], *, strict: bool = False,
                **options) -> Iterator[dict]:
    """The records of ``paths`` (as ``run_files`` builds them), in order, computed on Ray.
    ``strict``: the first unreadable image is BadInput."""
    for block in _blocks(address, model, paths, **options):
        for line in block["record"]:
            record = json.loads(line)
            if strict and "error" in record:
                raise BadInput(record["error"])
            yield record


def ray_outcomes(address: str | None, model, paths: Sequence[Path], **options
                 ) -> Iterator[Outcome]:
    """``stream_scores`` computed on Ray: an Outcome per path, in order (classification)."""
    for block in _blocks(address, model, paths, top_k=None, labels=None,
                         task="classification", **options):
        for path, error, scores in zip(block["path"], block["error"], block["scores"]):
            path = Path(str(path))
            yield Outcome(path, error=str(error)) if error else Outcome(path, scores=scores)


__all__ = ["EngineActor", "INSTALL_HINT", "connected", "import_ray", "ray_outcomes",
           "ray_records"]
