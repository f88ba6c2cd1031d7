"""`edgecnn run` at dataset scale: inputs, streaming, --output, bad images, --resume, Ctrl-C."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess

import numpy as np
import pytest
from conftest import CONSOLE_SCRIPT, CliResult, assert_one_line_error
from PIL import Image
from tiny_models import square_root_first, tiny_model

from edgecnn.errors import BadInput
from edgecnn.runtime import Engine
from edgecnn.runtime.predict import Interrupted, predict_files, run_files
from edgecnn.runtime.stream import expand_inputs, stream_scores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", labels=["ant", "bee", "cat", "dog"])


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """20 photos in two sub-folders (jpg and png), and a text file that is not an image."""
    folder = tmp_path_factory.mktemp("shots")
    rng = np.random.default_rng(3)
    for index in range(20):
        sub = folder / ("a" if index < 10 else "b")
        sub.mkdir(exist_ok=True)
        size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            sub / f"shot{index:02d}.{'jpg' if index % 2 else 'png'}")
    (folder / "README.txt").write_text("not an image\n")
    return folder


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def read_jsonl(path) -> list[dict]:
    """The records, read as strict JSON (Python's json takes NaN, jq and browsers do not)."""
    return [json.loads(line, parse_constant=_not_json) for line in path.read_text().splitlines()]


def test_inputs_are_files_folders_globs_and_lists(shots, tmp_path):
    every = expand_inputs([shots])
    assert len(every) == 20 and every == sorted(every)  # recursive, images only, sorted
    listing = tmp_path / "list.txt"
    listing.write_text(f"{every[3]}\n\n{every[1]}\n")
    picked = expand_inputs([every[0], f"{shots}/b/*.jpg", f"@{listing}", every[0]])
    assert picked == [every[0], *sorted(p for p in every[10:] if p.suffix == ".jpg"),
                      every[3], every[1]]  # in order, each once


def text_folder(folder):
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    return folder


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "is empty"),
    (lambda tmp: text_folder(tmp / "t"), "has no image files"),
    (lambda tmp: f"@{tmp / 'missing.txt'}", "list file not found"),
    (lambda tmp: os.mkfifo(tmp / "list.fifo") or f"@{tmp / 'list.fifo'}",
     "list file is a FIFO, not a regular file"),  # the read blocked forever
    (lambda tmp: f"@{tmp}", "list file is a directory"),
    (lambda tmp: f"{tmp}/*.jpg", "no files match"),
])
def test_bad_inputs_are_one_line_and_write_nothing(cli, tiny, tmp_path, make, fragment):
    output = tmp_path / "preds.jsonl"
    assert_one_line_error(cli("run", tiny.path, make(tmp_path), "-o", output), 2, fragment)
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) in ([], ["empty"], ["t"],
                                                                ["list.fifo"])


@pytest.mark.parametrize("output, fragment", [
    ("missing/preds.jsonl", "output directory does not exist"),
    ("preds.txt", "--output must end in .jsonl or .csv"),
])
def test_unwritable_output(cli, tiny, shots, tmp_path, output, fragment):
    assert_one_line_error(cli("run", tiny.path, shots, "-o", tmp_path / output), 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_jsonl_and_csv_records_match_the_engine(cli, tiny, shots, tmp_path):
    files = expand_inputs([shots])
    expected = Engine(tiny.path, "cpu").predict(files, top_k=2)
    result = cli("run", tiny.path, shots, "-o", tmp_path / "p.jsonl", "--top-k", "2",
                 "--batch", "3", "--workers", "2", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["done"], summary["failed"]) == (20, 20, 0)
    records = read_jsonl(tmp_path / "p.jsonl")
    assert [record["image"] for record in records] == [str(path) for path in files]
    for record, prediction in zip(records, expected):
        assert [entry["label"] for entry in record["top_k"]] == [label for label, _ in prediction]
        np.testing.assert_allclose([e["probability"] for e in record["top_k"]],
                                   [p for _, p in prediction], atol=1e-6)
    assert cli("run", tiny.path, shots, "-o", tmp_path / "p.csv", "--top-k", "2").code == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "error", "top1", "p1", "top2", "p2"]
    assert [(row["image"], row["top1"]) for row in rows] == [
        (record["image"], record["top_k"][0]["label"]) for record in records]


def test_predict_files_collects_the_records_run_writes(tiny, shots, tmp_path):
    files = expand_inputs([shots])[:4]
    run_files(tiny.path, files, output=tmp_path / "p.jsonl", top_k=2)
    collected = predict_files(tiny.path, files, top_k=2, batch=3)
    assert (collected["images"], collected["done"], collected["output"]) == (4, 4, None)
    assert collected["results"] == read_jsonl(tmp_path / "p.jsonl")


def test_workers_batches_and_a_fixed_batch_give_the_same_scores(tiny, shots, tmp_path):
    files = expand_inputs([shots])
    engine = Engine(tiny.path, "cpu")
    reference = np.stack([outcome.scores for outcome in stream_scores(engine, files, workers=1,
                                                                      batch=1)])
    for batch, workers in ((16, 4), (7, 2)):
        scores = np.stack([o.scores for o in stream_scores(engine, files, batch=batch,
                                                           workers=workers)])
        np.testing.assert_allclose(scores, reference, rtol=1e-6, atol=1e-6)
    fixed = tiny_model(tmp_path / "fixed.onnx", batch=4, labels=["ant", "bee", "cat", "dog"])
    scores = np.stack([o.scores for o in stream_scores(Engine(fixed.path, "cpu"), files, batch=3)])
    np.testing.assert_allclose(scores, reference, rtol=1e-6, atol=1e-6)  # padded last chunk


def test_memory_is_bounded_by_the_lookahead(tiny, shots):
    files = expand_inputs([shots]) * 10
    taken = []

    def paths():
        for path in files:
            taken.append(path)
            yield path

    engine = Engine(tiny.path, "cpu")
    for done, _ in enumerate(stream_scores(engine, paths(), batch=4, workers=2), 1):
        assert len(taken) - done <= (2 * 4 + 2) + 4  # the lookahead and the batch being filled
    assert done == len(files)


def test_bad_images_are_recorded_and_skipped(cli, tiny, shots, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.jpg", "c.png"):
        (folder / name).write_bytes((shots / "a" / "shot01.jpg").read_bytes())
    (folder / "b.jpg").write_text("not a jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'a.jpg'}\n{folder / 'gone.jpg'}\n")
    output = tmp_path / "p.jsonl"
    result = cli("run", tiny.path, folder, f"@{listing}", "-o", output)
    assert result.code == 3, result.stderr  # some failed: exit 3
    records = read_jsonl(output)
    assert [("error" in record) for record in records] == [False, True, False, True]
    assert "cannot read image" in records[1]["error"] and "image not found" in records[3]["error"]
    assert "b.jpg" in result.stderr and "gone.jpg" in result.stderr
    assert "wrote 4 record(s)" in result.stdout and "2 image(s) failed" in result.stdout
    listed = cli("run", tiny.path, folder, "--json")  # stdout is JSON: the warnings go to stderr
    assert listed.code == 3 and json.loads(listed.stdout)["failed"] == 1
    assert listed.stderr.startswith("warning: cannot read image") and "b.jpg" in listed.stderr
    assert_one_line_error(cli("run", tiny.path, folder, "--strict", "-o", output), 2, "b.jpg")
    assert_one_line_error(cli("run", tiny.path, folder / "b.jpg"), 2, "cannot read image")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_run_that_writes_no_record_leaves_the_old_output_as_it_was(cli, tiny, shots, tmp_path,
                                                                     suffix):
    """The output was emptied when the run opened it: --strict stopping at a bad first image
    destroyed the records of an earlier run (or left an empty file where there was none)."""
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    other = tmp_path / "other.jpg"
    other.write_text("not a jpeg")
    good = sorted(shots.glob("a/*"))[0]
    output, fresh = tmp_path / f"old{suffix}", tmp_path / f"new{suffix}"
    output.write_text("precious\n")
    for target in (output, fresh):
        result = cli("run", tiny.path, bad, good, "-o", target, "--strict")
        assert_one_line_error(result, 2, "bad.png")
        result = cli("run", tiny.path, bad, other, "-o", target)  # every image failed: exit 2
        assert_one_line_error(result, 2, "none of the 2 images could be scored", "bad.png")
    assert output.read_text() == "precious\n" and not fresh.exists()


@pytest.mark.parametrize("resume, held", [(False, 2), (True, 10)])
def test_a_run_of_failures_leaves_the_old_output(tiny, shots, tmp_path, monkeypatch, resume,
                                                 held):
    """Past HELD_FAILURES failed records a new output was opened and emptied (a broken model
    scoring NaN on every image of a large set: it is written beside it now); --resume appended
    the failures of a run that then said every image failed (they are held back now)."""
    from edgecnn.runtime.records import RecordWriter

    monkeypatch.setattr(RecordWriter, "HELD_FAILURES", held)
    bad = []
    for index in range(3):
        bad.append(tmp_path / f"bad{index}.png")
        bad[-1].write_text("not an image")
    output = tmp_path / "old.jsonl"
    run_files(tiny.path, [sorted(shots.glob("a/*"))[0]], output=output)
    before = output.read_bytes()
    with pytest.raises(BadInput, match="none of the 3 images could be scored"):
        run_files(tiny.path, bad, output=output, resume=resume)
    assert output.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_resume_reads_back_labels_holding_the_csv_separators(tmp_path, shots):
    """A segmentation label 'building;edifice' (ADE20K's) split at the ';' of the classes
    cell, and a classification label "" was dropped: --resume refused the run's own file."""
    segmenter = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=3,
                           labels=["wall", "building;edifice", "sky=blue"])
    classifier = tiny_model(tmp_path / "cls.onnx", labels=["", "b", "c", "d"])
    first, second = sorted(shots.glob("a/*"))[:2]
    for model in (segmenter, classifier):
        output = tmp_path / f"{model.path.stem}.csv"
        run_files(model.path, [first], output=output)
        summary = run_files(model.path, [first, second], output=output, resume=True)
        assert (summary["resumed"], summary["done"]) == (1, 1)


def test_a_record_whose_image_is_not_a_string_is_one_line(tiny, shots, tmp_path):
    output = tmp_path / "odd.jsonl"
    output.write_text('{"image": ["x"], "error": "e"}\n')  # was an unhashable-list TypeError
    with pytest.raises(BadInput, match="cannot resume .* line 1 is not a record"):
        run_files(tiny.path, [sorted(shots.glob("a/*"))[0]], output=output, resume=True)


def test_an_output_that_is_a_symlink_is_replaced_not_written_through(cli, tiny, shots,
                                                                     tmp_path):
    """As export and quantize do: the link's target, elsewhere, was overwritten by records."""
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("someone else's file\n")
    link = tmp_path / "out" / "link.jsonl"
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    good = sorted(shots.glob("a/*"))[0]
    assert cli("run", tiny.path, good, "-o", link).code == 0
    assert elsewhere.read_text() == "someone else's file\n"
    assert not link.is_symlink() and read_jsonl(link)[0]["image"] == str(good)
    link.unlink()
    link.symlink_to(elsewhere)
    assert_one_line_error(cli("run", tiny.path, good, "-o", link, "--resume"), 2,
                          "is a symbolic link", "--resume")
    assert elsewhere.read_text() == "someone else's file\n"


def test_an_image_the_model_scores_nan_is_a_failed_record_not_nan_json(cli, tiny, tmp_path):
    model = square_root_first(tiny.path, tmp_path / "sqrt.onnx")
    for name, value in (("dark.png", 0), ("light.png", 255)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name)
    output = tmp_path / "p.jsonl"
    result = cli("run", model, tmp_path / "dark.png", tmp_path / "light.png", "-o", output)
    assert result.code == 3, result.stderr
    dark, light = read_jsonl(output)
    assert "NaN or Inf" in dark["error"] and "dark.png" in dark["error"] and "top_k" not in dark
    assert len(light["top_k"]) == 4 and "error" not in light
    assert "dark.png" in result.stderr and "1 image(s) failed" in result.stdout
    assert_one_line_error(cli("run", model, tmp_path / "dark.png", "--json"), 2, "NaN or Inf")
    assert_one_line_error(cli("run", model, tmp_path, "--strict"), 2, "dark.png", "NaN or Inf")


def test_resume_skips_what_the_output_holds_and_drops_a_cut_line(cli, tiny, shots, tmp_path):
    output = tmp_path / "p.jsonl"
    assert cli("run", tiny.path, shots, "-o", output).code == 0
    full = output.read_text().splitlines(keepends=True)
    output.write_text("".join(full[:5]) + full[5][:20])  # a killed run: 5 lines and a cut one
    result = cli("run", tiny.path, shots, "-o", output, "--resume", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["resumed"], summary["done"]) == (5, 15)
    assert output.read_text() == "".join(full)
    assert_one_line_error(cli("run", tiny.path, shots, "--resume"), 2,
                          "--resume needs --output FILE")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_refuses_records_of_another_model_or_top_k(cli, tiny, shots, tmp_path, suffix):
    """--resume appended this run's records after another model's (other labels) or another
    --top-k's without a word: the file mixed two runs."""
    output = tmp_path / f"p{suffix}"
    first = sorted(shots.glob("a/*"))[:3]
    assert cli("run", tiny.path, *first, "-o", output, "--top-k", "3").code == 0
    held = output.read_bytes()
    unlabelled = tiny_model(tmp_path / "other.onnx", seed=1).path
    for model, flags, fragment in ((unlabelled, ["--top-k", "3"], "without labels"),
                                   (tiny.path, ["--top-k", "2"], "--top-k 2")):
        result = cli("run", model, shots, "-o", output, "--resume", *flags)
        assert_one_line_error(result, 2, "cannot resume", str(output), fragment)
        assert output.read_bytes() == held
    result = cli("run", tiny.path, shots, "-o", output, "--resume", "--top-k", "3", "--json")
    assert result.code == 0 and json.loads(result.stdout)["resumed"] == 3, result.stderr


def test_a_full_disk_mid_run_is_one_line_and_resume_completes(cli, tiny, shots, tmp_path,
                                                               monkeypatch):
    from edgecnn.runtime.records import RecordWriter

    complete = tmp_path / "complete.jsonl"
    assert cli("run", tiny.path, shots, "-o", complete).code == 0
    output, real, calls = tmp_path / "p.jsonl", RecordWriter.write, []

    def fill_the_disk(self, record):
        calls.append(record)
        if len(calls) == 6:  # half a line goes out, then the disk is full
            self.handle.write(b'{"image": "sho')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, record)

    monkeypatch.setattr(RecordWriter, "write", fill_the_disk)
    result = cli("run", tiny.path, shots, "-o", output)
    assert_one_line_error(result, 2, f"No space left on device ({output})", "not an edgecnn bug",
                          "it holds 5 complete record(s): --resume continues it")
    monkeypatch.undo()
    assert cli("run", tiny.path, shots, "-o", output, "--resume").code == 0
    assert output.read_text() == complete.read_text()


def test_a_file_size_limit_mid_run_keeps_complete_lines_only(tiny, shots, tmp_path):
    """A real refused write (RLIMIT_FSIZE: the kernel writes part of a line, then EFBIG), in a
    process of its own: the output keeps whole records only and the one line says how many."""
    import resource

    def run_limited(output, size):
        def limit_file_size():
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

        done = subprocess.run([*CONSOLE_SCRIPT, "run", str(tiny.path), str(shots), "-o",
                               str(output)], capture_output=True, text=True, timeout=300,
                              preexec_fn=limit_file_size)
        return CliResult(done.returncode, done.stdout, done.stderr)

    no_header = run_limited(tmp_path / "p.csv", 10)  # not even the CSV header: no empty file
    assert_one_line_error(no_header, 2, "File too large")
    assert not (tmp_path / "p.csv").exists()
    output = tmp_path / "p.jsonl"
    result = run_limited(output, 1500)
    held = len(output.read_text().splitlines())
    assert 0 < held < 20 and output.read_text().endswith("\n"), output.read_text()[-80:]
    assert_one_line_error(result, 2, "File too large", "not an edgecnn bug",
                          f"it holds {held} complete record(s): --resume continues it")
    assert len(read_jsonl(output)) == held


def test_a_model_images_cannot_feed_is_refused_once(cli, shots, tmp_path):
    """A 5-channel input (GRAY in the metadata) is one line before any image, not 20
    'skipped' records blaming the images."""
    model = tiny_model(tmp_path / "five.onnx", channels=5).path
    assert_one_line_error(cli("run", model, shots), 2,
                          f"error: {model}: input 'input' takes 5 channels (GRAY)", "images give RGB or BGR (3) or GRAY (1)")


def test_ctrl_c_leaves_complete_lines_and_says_how_far(cli, tiny, shots, tmp_path, monkeypatch):
    output = tmp_path / "p.jsonl"
    seen = []

    def interrupt(record):
        seen.append(record)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="interrupted after 7 of 20 image"):
        run_files(tiny.path, [shots], output=output, on_record=interrupt, batch=4)
    assert len(read_jsonl(output)) == 7 and output.read_text().endswith("\n")
    import edgecnn.runtime.predict as predict

    real = predict._record
    calls = []

    def record(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(predict, "_record", record)
    result = cli("run", tiny.path, shots, "-o", output, "--resume")
    assert_one_line_error(result, 130, "interrupted after 3 of 13", "holds 10 complete",
                          "--resume")


def test_segmentation_masks(cli, tmp_path, shots):
    model = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=3)
    masks = tmp_path / "masks"
    image = shots / "a" / "shot00.png"
    result = cli("run", model.path, image, "--masks", masks, "--json")
    assert result.code == 0, result.stderr
    (mask_file,) = list(masks.rglob("*.png"))
    assert mask_file.name == "shot00.png.png"
    np.testing.assert_array_equal(np.asarray(Image.open(mask_file)), Engine(model.path).predict(image))
    assert_one_line_error(cli("run", tmp_path / "seg.onnx", image, "--masks", masks, "--top-k", "0"),
                          2, "--top-k")
    many = tiny_model(tmp_path / "many.onnx", task="segmentation", classes=70_000, size=(2, 2))
    assert_one_line_error(cli("run", many.path, image, "--masks", tmp_path / "wide"), 2,
                          "70000 classes", "16-bit")  # class 69999 was written as 4463
    assert not (tmp_path / "wide").exists()


def test_progress_bar_only_on_a_terminal_and_never_with_json(cli, tiny, shots, tmp_path,
                                                             monkeypatch):
    import contextlib

    from edgecnn.cli import _app, runtime_cmd

    calls = []

    @contextlib.contextmanager
    def recording(enabled=True):
        with _app.progress(enabled) as (on_step, on_progress):  # the real one decides
            calls.append(("bar", on_progress is not None))
            yield on_step, on_progress and (lambda *args: calls.append(args) or on_progress(*args))

    monkeypatch.setattr(runtime_cmd, "progress", recording)
    monkeypatch.setattr(_app.err, "_force_terminal", True)
    assert cli("run", tiny.path, shots, "-o", tmp_path / "p.jsonl").code == 0
    assert calls[0] == ("bar", True) and calls[-1] == ("images", 20, 20)
    for args, terminal in ((["-o", tmp_path / "p.jsonl", "--json"], True),
                           (["-o", tmp_path / "p.jsonl"], False)):
        calls.clear()
        monkeypatch.setattr(_app.err, "_force_terminal", terminal)
        result = cli("run", tiny.path, shots, *args)
        assert result.code == 0 and calls == [("bar", False)]
        assert "\x1b" not in result.stderr
