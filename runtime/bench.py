"""``benchmark(path)``: latency percentiles, throughput and peak memory of one model. Torch-free.

What ``edgecnn bench`` prints. The model runs through ``Engine.run`` (input checks included,
a few microseconds per call) on a random batch of the model's input shape.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgecnn.errors import BadInput, require_count
from edgecnn.runtime.engine import FIXED_BATCH_ADVICE, Engine, TensorSpec, check_feed_bytes
from edgecnn.runtime.metadata import fixed_size
from edgecnn.runtime.providers import ProviderRequest, short_name


@dataclass
class BenchResult:
    model: str
    providers: list[str]
    precision: str | None
    batch: int
    threads: int | None
    warmup: int
    runs: int
    load_seconds: float
    latency_ms: dict  # p50, p90, p99, mean, min, max of one run() call
    throughput: float  # items (batch rows) per second
    peak_rss_mb: float | None  # of this process, so far (includes the model load)

    @property
    def provider(self) -> str:
        return short_name(self.providers[0])

    def as_dict(self) -> dict:
        return asdict(self)


MAX_RUNS = 100_000  # timed (or warm-up) calls: the latencies are kept, one float each


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the OS does not say).

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space.
    getrusage's ru_maxrss survives exec, so a bench started from a big parent (a test runner,
    a notebook) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KB


def random_inputs(engine: Engine, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A random feed for every input: batch axis from ``batch``, other dynamic axes from the
    metadata's input shape; BadInput when a size is unknown or contradicts a fixed axis."""
    shapes = {spec.name: _feed_shape(spec, engine, batch) for spec in engine.inputs}
    # a fixed batch axis is fed its own size, whatever --batch says (it must equal it)
    fixed = any(spec.shape and fixed_size(spec.shape[0]) not in (None, 1)
                for spec in engine.inputs)
    check_feed_bytes({spec.name: (shapes[spec.name], spec.dtype) for spec in engine.inputs},
                     FIXED_BATCH_ADVICE if fixed else "use a smaller --batch",
                     prefix="the fixed batch of " if fixed else f"--batch {batch}: " if batch
                     else "")
    rng = np.random.default_rng(seed)
    return {spec.name: _random_array(spec, shapes[spec.name], rng) for spec in engine.inputs}


def _feed_shape(spec: TensorSpec, engine: Engine, batch: int | None) -> list[int]:
    if spec.dtype is None:
        raise BadInput(f"input {spec.name!r} has a type benchmark cannot fill ({spec.describe()})")
    # The metadata's sizes, in the input's layout, size the dynamic axes of the image input.
    known = None
    if engine.metadata is not None and engine.metadata.input.name == spec.name:
        known = [batch or 1, *engine.metadata.input.sample_shape]
    shape = []
    for axis, size in enumerate(spec.shape):
        if isinstance(size, int) and size == 0:
            raise BadInput(f"input {spec.name!r} has an axis of size 0 ({spec.describe()}): "
                           "there is nothing to feed it")
        fixed = fixed_size(size) is not None
        if axis == 0 and batch is not None and fixed and size != batch:
            raise BadInput(f"input {spec.name!r}: expected batch {size} (fixed in the model), "
                           f"got --batch {batch}")
        if not fixed:
            if axis == 0:
                size = batch or 1
            elif known is not None and axis < len(known):
                size = known[axis]
            else:
                raise BadInput(f"input {spec.name!r} has a dynamic axis {axis} "
                               f"({spec.describe()}) and no edgecnn metadata to size it: give "
                               "--input-size (and --input-name with several inputs), or "
                               "`edgecnn annotate` the file")
        shape.append(int(size))
    return shape


def _random_array(spec: TensorSpec, shape: list[int], rng) -> np.ndarray:
    # Drawn in the input's own dtype (float16 via float32): a float64 draw first would need
    # two to four times the feed's memory.
    if np.issubdtype(spec.dtype, np.floating):
        drawn = np.float64 if spec.dtype == np.float64 else np.float32
        return rng.standard_normal(shape, dtype=drawn).astype(spec.dtype, copy=False)
    return rng.integers(0, 2 if spec.dtype == np.bool_ else 100, shape, dtype=spec.dtype)


def benchmark(path: str | os.PathLike, provider: ProviderRequest = "auto", *,
              batch: int | None = None, threads: int | None = None, warmup: int = 10,
              runs: int = 100, fallback: bool = True, on_first_output=None,
              **engine_options) -> BenchResult:
    """Time ``runs`` calls of Engine.run after ``warmup`` untimed ones; ``on_first_output``
    gets the outputs ({name: array}) of one more untimed call before them (bench --matrix
    compares them)."""
    require_count("batch", batch)
    require_count("runs", runs, optional=False, at_most=MAX_RUNS)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= MAX_RUNS:
        raise BadInput(f"warmup must be an integer in [0, {MAX_RUNS:,}], got {warmup!r}")
    started = time.perf_counter()
    engine = Engine(path, provider, threads, fallback, **engine_options)
    load_seconds = time.perf_counter() - started
    feed = random_inputs(engine, batch)
    if on_first_output is not None:  # one more untimed call
        on_first_output(engine.run(feed))
    for _ in range(warmup):
        engine.run(feed)
    times = np.empty(runs)
    for index in range(runs):
        begin = time.perf_counter()
        engine.run(feed)
        times[index] = time.perf_counter() - begin
    first = next(iter(feed.values()), None)
    items = first.shape[0] if first is not None and first.ndim else 1  # a scalar: one item
    p50, p90, p99 = np.percentile(times, [50, 90, 99]) * 1e3
    latency = {"p50": p50, "p90": p90, "p99": p99, "mean": times.mean() * 1e3,
               "min": times.min() * 1e3, "max": times.max() * 1e3}
    return BenchResult(
        model=str(path), providers=engine.providers, precision=engine.precision,
        batch=items, threads=threads, warmup=warmup, runs=runs,
        load_seconds=round(load_seconds, 4),
        latency_ms={key: round(float(value), 6) for key, value in latency.items()},
        throughput=round(items * runs / float(times.sum()), 2), peak_rss_mb=peak_rss_mb())
