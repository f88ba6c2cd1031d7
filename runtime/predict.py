"""What ``edgecnn run`` does: images -> one record each, streamed to a file or collected.

    run_files("resnet18.onnx", ["photos/"], output="preds.jsonl")   # a summary dict
    predict_files("resnet18.onnx", ["cat.jpg"])                      # every record, in memory

Records (docs/runtime.md, "Dataset runs"): ``{"image": path, "top_k": [{"index", "label"?,
"probability"}, ...]}`` for classification, ``{"image", "shape", "classes": [{"index",
"label"?, "pixels", "fraction"}, ...]}`` for segmentation, ``{"image", "error"}`` for a file
that could not be read or that the model scored NaN or Inf. The output file (``records.py``)
is written one complete line a record, so an interrupted run leaves whole records and
``resume`` carries on after them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput, EdgecnnError, refused_write, require_count
from edgecnn.runtime.engine import Engine
from edgecnn.runtime.model_file import check_model_file
from edgecnn.runtime.preprocess import check_image_channels
from edgecnn.runtime.postprocess import top_k as top_k_of, usable_labels
from edgecnn.runtime.providers import ProviderRequest
from edgecnn.runtime.records import (
    MAX_MASK_CLASSES, RecordWriter, RunShape, check_record_path, mask_path, write_mask,
)
from edgecnn.runtime.stream import (
    Outcome, check_stream_options, expand_inputs, stream_scores, streaming_session_options,
)

SOME_FAILED_EXIT_CODE = 3  # `edgecnn run`: some images failed, the others ran


class WriteRefused(EdgecnnError):
    """The machine refused a write to ``output`` (a full disk or quota, a read-only file
    system); the message says how many complete records it holds. The CLI exits with 2."""

    exit_code = 2


class Interrupted(EdgecnnError):
    """Ctrl-C (or SIGTERM) during a run: says how far it got. The CLI exits with 130."""

    exit_code = 130


def _class_summary(class_map: np.ndarray, labels: Sequence[str] | None) -> list[dict]:
    """The classes present in a segmentation map, most pixels first (``labels``: one per class,
    or None for class indices)."""
    classes, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [{"index": int(classes[i]), **({"label": labels[int(classes[i])]} if labels else {}),
             "pixels": int(counts[i]), "fraction": round(float(counts[i]) / class_map.size, 6)}
            for i in order]


def _record(outcome: Outcome, task: str, top_k: int, labels, probabilities: bool) -> dict:
    """``probabilities``: the scores are probabilities already, a Softmax's or a Sigmoid's
    (Engine.scores_are_probabilities)."""
    if outcome.error is not None:
        return {"image": str(outcome.path), "error": outcome.error}
    if task == "classification":  # always the index; the label where there is one
        best = top_k_of(outcome.scores[None], top_k, probabilities=probabilities)[0]
        return {"image": str(outcome.path),
                "top_k": [{"index": index, **({"label": labels[index]} if labels else {}),
                           "probability": round(probability, 6)} for index, probability in best]}
    class_map = outcome.scores.argmax(axis=0)
    return {"image": str(outcome.path), "shape": list(class_map.shape),
            "classes": _class_summary(class_map, labels)}


def _local_records(engine: Engine, paths, task: str, top_k: int, labels, masks,
                   **stream) -> Iterator[dict]:
    """The records of ``paths`` streamed through ``engine`` here; class maps to ``masks``."""
    outcomes = stream_scores(engine, paths, **stream)
    with contextlib.closing(outcomes):  # its threads joined on any exit
        for outcome in outcomes:
            record = _record(outcome, task, top_k, labels, engine.scores_are_probabilities)
            if masks is not None and outcome.scores is not None:
                write_mask(mask_path(masks, outcome.path), outcome.scores.argmax(axis=0))
            yield record


def _held(summary: dict) -> int:
    """The complete records the output holds: those resumed past and those written now."""
    return summary["resumed"] + summary["done"]


def run_files(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
              output: str | os.PathLike | None = None, resume: bool = False,
              strict: bool = False, masks: str | os.PathLike | None = None, top_k: int = 5,
              batch: int | None = None, workers: int | None = None,
              provider: ProviderRequest = "auto", threads: int | None = None,
              fallback: bool = True, cache_dir: str | os.PathLike | None = None,
              preprocessing: Mapping | None = None, max_pixels: int | None = None,
              ray: str | None = None,
              on_start: Callable[[dict], None] | None = None,
              on_record: Callable[[dict], None] | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Stream the images ``inputs`` name (files, folders, globs, ``@list.txt``: see
    ``expand_inputs``) through ``model``; each record goes to ``output`` (.jsonl or .csv,
    one complete line each) and to ``on_record``. Returns a summary: the model, ``images``,
    ``done`` (records this run), ``failed`` (of them, unreadable files, each in ``failures``),
    ``resumed`` (skipped: already in ``output`` with ``resume``), ``seconds`` and
    ``images_per_second`` (from the first image decoded to the last record, model loading
    not included).

    ``on_start(summary)`` runs once the model is loaded, before the first image.
    ``masks``: a folder for segmentation class maps as PNGs (mirroring the image paths).
    ``strict``: an unreadable image is BadInput instead of a record. ``ray``: score the images
    on Ray Data (an address, or ``"local"``; ``runtime/ray.py``), writing the same records.
    Ctrl-C raises Interrupted,
    whose message says how many records the output holds. Nothing is written before the
    inputs, the output path and the model have been checked.
    """
    require_count("top_k", top_k, optional=False)
    check_stream_options(batch, workers, max_pixels)
    if resume and output is None:
        raise BadInput("resume needs output=FILE (the file to continue)")
    check_model_file(model)  # the first argument's error first, before the images are listed
    paths = expand_inputs(inputs)
    if ray is not None:
        from edgecnn.runtime.ray import import_ray, ray_records

        import_ray()
        if masks is not None:
            raise BadInput("masks are written by a local run; leave ray out to write them")
    if output is not None:
        check_record_path(output)
    if masks is not None and Path(masks).exists() and not Path(masks).is_dir():
        raise BadInput(f"masks is a folder for class maps; {masks} exists and is not a folder")
    engine = Engine(model, provider, threads, fallback, cache_dir=cache_dir,
                    preprocessing=preprocessing, session_options=streaming_session_options())
    metadata = engine.require_metadata()
    if metadata.task not in ("classification", "segmentation"):
        raise BadInput(f"run does not know task {metadata.task!r}")
    check_image_channels(metadata.input, str(model))  # once, not as each image's error
    if masks is not None and metadata.task != "segmentation":
        raise BadInput(f"masks are class maps of a segmentation model; {model} is "
                       f"{metadata.task}")
    declared = engine.outputs[0].shape[1] if len(engine.outputs[0].shape) > 1 else None
    labels = usable_labels(metadata.labels, declared)
    classes = 1 if declared is None else declared  # a single score: a binary classifier's
    if masks is not None and isinstance(classes, int) and classes > MAX_MASK_CLASSES:
        raise BadInput(f"masks are 16-bit PNGs of class indices, which hold up to "
                       f"{MAX_MASK_CLASSES} classes; {model} has {classes} classes")
    summary = {"model": str(model), "name": metadata.model, "task": metadata.task,
               "precision": metadata.precision, "weights": metadata.weights,
               "providers": engine.providers, "images": len(paths), "done": 0, "failed": 0,
               "resumed": 0, "output": None if output is None else str(output), "failures": [],
               **({"ray": ray} if ray is not None else {})}
    shape = RunShape(metadata.task, top_k, min(top_k, classes) if isinstance(classes, int)
                     else None, labels)
    writer = RecordWriter(output, shape, resume) if output is not None else None
    todo = [path for path in paths if writer is None or str(path) not in writer.done]
    summary["resumed"] = len(paths) - len(todo)
    all_failed = False
    try:
        if on_start is not None:
            on_start(summary)
        started = time.perf_counter()
        options = {"batch": batch, "workers": workers, "max_pixels": max_pixels}
        if ray is None:
            records = _local_records(engine, todo, metadata.task, top_k, labels, masks,
                                     strict=strict, **options)
        else:
            records = ray_records(ray, model, todo, strict=strict, task=metadata.task,
                                  top_k=top_k, labels=labels, engine_options={
                                      "provider": provider, "threads": threads,
                                      "fallback": fallback, "cache_dir": cache_dir,
                                      "preprocessing": preprocessing}, **options)
        with contextlib.closing(records):  # threads joined, Ray left, on any exit
            for record in records:
                if writer is not None:
                    writer.write(record)
                summary["done"] += 1
                if "error" in record:
                    summary["failed"] += 1
                    summary["failures"].append({"image": record["image"],
                                                "error": record["error"]})
                if on_record is not None:
                    on_record(record)
                if on_progress is not None:
                    on_progress(summary["resumed"] + summary["done"], len(paths))
        failed = summary["failed"]
        if failed and failed == summary["done"] and not summary["resumed"]:
            all_failed, first = True, summary["failures"][0]["error"]
            raise BadInput(first if failed == 1 else
                           f"none of the {failed} images could be scored (the first: {first})")
        seconds = time.perf_counter() - started
        summary["seconds"] = round(seconds, 3)
        summary["images_per_second"] = round(summary["done"] / seconds, 2) if seconds else None
    except KeyboardInterrupt:
        where = ""
        if writer is not None:
            where = (f"; {output} holds {_held(summary)} complete record(s), --resume continues "
                     "it" if writer.opened or summary["done"] else
                     f"; nothing was written to {output}")
        raise Interrupted(f"interrupted after {summary['done']} of {len(todo)} image(s)"
                          f"{where}") from None
    except OSError as error:
        if output is None or (message := refused_write(error, output)) is None:
            raise
        raise WriteRefused(f"{message}; it holds {_held(summary)} complete record(s): --resume "
                           "continues it once there is room") from None
    finally:
        if writer is not None:  # the records of a run of failures only are not kept
            writer.close(keep_held=not all_failed)
    return summary


def predict_files(model: str | os.PathLike, images: Sequence[str | os.PathLike], *,
                  top_k: int = 5, provider: ProviderRequest = "auto", threads: int | None = None,
                  fallback: bool = True, cache_dir: str | os.PathLike | None = None,
                  preprocessing: Mapping | None = None, **options) -> dict:
    """``run_files`` with every record collected: the summary plus ``results`` (a list).
    For a few images; a dataset belongs in ``run_files(output=...)``."""
    results: list[dict] = []
    summary = run_files(model, images, top_k=top_k, provider=provider, threads=threads,
                        fallback=fallback, cache_dir=cache_dir, preprocessing=preprocessing,
                        on_record=results.append, **options)
    return {**summary, "results": results}


__all__ = ["Interrupted", "SOME_FAILED_EXIT_CODE", "predict_files", "run_files"]
