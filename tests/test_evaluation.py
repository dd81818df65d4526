"""Accuracy and speed seen from inside: metric maths, ground-truth conversion, a real
``--eval`` replay checked against the official ``cityscapesscripts`` evaluator and against
``segstream eval`` offline, per-frame latency that adds up, the Prometheus endpoint and
``segstream report``."""

from __future__ import annotations

import io
import json
import math
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES, DATA, ROOT, run_segstream, segstream_cmd
from dataset_trees import espnet_train_ids
from test_streams import free_port

from segstream.datasets.cityscapes import CLASS_NAMES, LABELS, train_ids_to_label_ids
from segstream.evaluation.ground_truth import color_to_label_ids
from segstream.evaluation.metrics import ConfusionAccumulator, confusion, scores

GT_FRAME = "frankfurt_000001_058914"


def test_scores_of_a_hand_checked_matrix():
    # (ground truth, prediction): class "c" is absent from both; 255 is ignored in the
    # ground truth and "none" (a model's ignore output) in the prediction.
    target = np.array([[0, 0, 0, 1, 1, 255]])
    pred = np.array([[0, 0, 1, 1, 255, 0]])
    matrix = confusion(pred, target, 3)
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
    s = scores(matrix, ("a", "b", "c"), categories=("x", "x", "y"))
    a, b, c = (s["classes"][k] for k in "abc")
    assert (a["iou"], a["precision"], a["recall"], a["f1"]) == pytest.approx((2 / 3, 1.0, 2 / 3, 0.8), abs=1e-6)
    assert (b["iou"], b["precision"], b["recall"], b["f1"]) == pytest.approx((1 / 3, 0.5, 0.5, 0.5), abs=1e-6)
    assert c == {"iou": None, "precision": None, "recall": None, "f1": None, "gt_pixels": 0, "pred_pixels": 0}
    assert s["miou"] == pytest.approx(0.5, abs=1e-6)  # the absent class is not averaged
    assert s["pixel_accuracy"] == pytest.approx(3 / 5, abs=1e-6)  # the ignored pixel is not counted
    assert s["mean_precision"] == pytest.approx(0.75, abs=1e-6)
    assert s["mean_recall"] == pytest.approx(7 / 12, abs=1e-6)
    assert s["mean_f1"] == pytest.approx(0.65, abs=1e-6)
    assert s["categories"] == {"x": pytest.approx(0.8, abs=1e-6), "y": None}
    assert s["category_miou"] == pytest.approx(0.8, abs=1e-6)


def test_predictions_are_compared_at_ground_truth_resolution():
    gt = np.zeros((4, 8), np.uint8)
    gt[:, 4:] = 1
    gt[0, 0] = 255
    acc = ConfusionAccumulator(2)
    acc.add(np.array([[0, 1]], np.uint8), gt)  # 1x2 prediction, nearest-upsampled to 4x8
    assert acc.matrix.tolist() == [[15, 0, 0], [0, 16, 0]] and acc.frames == 1
    again = ConfusionAccumulator.from_json(json.loads(json.dumps(acc.to_json())))
    assert (again.matrix == acc.matrix).all() and again.frames == 1
    with pytest.raises(ValueError, match="compare them at one size"):
        confusion(np.zeros((2, 2)), np.zeros((3, 3)), 2)


def test_label_table_is_the_official_one():
    from cityscapesscripts.helpers.labels import labels as official

    ours = {(lab.name, lab.id, lab.train_id, lab.category, lab.ignore_in_eval, lab.color) for lab in LABELS}
    assert ours == {(lab.name, lab.id, lab.trainId, lab.category, lab.ignoreInEval, lab.color) for lab in official}


def test_colour_ground_truth_to_label_ids(tmp_path):
    color = cv2.imread(str(DATA / f"{GT_FRAME}_gtFine_color.png"))
    ids = color_to_label_ids(color)
    assert ids.shape == color.shape[:2] and ids.dtype == np.uint8
    # every pixel's colour is its label's colour again (shared colours: black, pole, car)
    by_id = {lab.id: lab.color for lab in LABELS if lab.id >= 0}
    lut = np.array([by_id.get(i, (0, 0, 0))[::-1] for i in range(256)], np.uint8)
    assert (lut[ids] == color[:, :, :3]).all()
    assert set(np.unique(ids)) <= {0, 7, 8, 11, 17, 19, 20, 21, 23, 24, 25, 26, 33, 1, 2, 3, 4, 5, 6, 9, 12, 13}
    shared = np.array([[[0, 0, 0], [153, 153, 153], [142, 0, 0]]], np.uint8)  # BGR
    assert color_to_label_ids(shared).tolist() == [[0, 17, 26]]

    bad = tmp_path / "bad_gtFine_color.png"
    cv2.imwrite(str(bad), np.full((4, 4, 3), (1, 2, 3), np.uint8))
    result = run_segstream("gt-from-color", str(bad))
    assert result.returncode == 2
    assert "RGB(3, 2, 1) x16" in result.stderr and "not Cityscapes label colours" in result.stderr


def _run_in_terminal(args: list[str], timeout: float) -> tuple[int, str]:
    """Run the CLI with its output on a pseudo-terminal (as a user sees it)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the run is over
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A Cityscapes tree of three val frames (one with its real ground truth, converted
    from the colour file by ``segstream gt-from-color``; two labelled by ESPNet q=3),
    replayed with ``--eval --cityscapes-results --record`` on a terminal."""
    root = tmp_path_factory.mktemp("evalrun")
    tree = root / "cityscapes"
    images, gts = tree / "leftImg8bit" / "val" / "frankfurt", tree / "gtFine" / "val" / "frankfurt"
    images.mkdir(parents=True)
    gts.mkdir(parents=True)
    for src in CITYSCAPES_FRAMES:
        (images / src.name).symlink_to(src)
        stem = src.name.replace("_leftImg8bit.png", "")
        if stem != GT_FRAME:
            cv2.imwrite(str(gts / f"{stem}_gtFine_labelIds.png"), train_ids_to_label_ids(espnet_train_ids(src, "espnet-cityscapes-q3")))
    shutil.copyfile(DATA / f"{GT_FRAME}_gtFine_color.png", gts / f"{GT_FRAME}_gtFine_color.png")
    converted = run_segstream("gt-from-color", str(gts / f"{GT_FRAME}_gtFine_color.png"), "-o", str(gts))
    assert converted.returncode == 0, converted.stderr
    assert (gts / f"{GT_FRAME}_gtFine_labelIds.png").is_file()

    record, results = root / "record", root / "results"
    code, output = _run_in_terminal(
        segstream_cmd("run", "--source", f"cityscapes:{tree}:val", "--eval", "--cityscapes-results", str(results),
                      "--record", str(record), "--publish", ""), timeout=240)
    assert code == 0, output[-3000:]
    stats = json.loads((record / "stats.json").read_text())
    return {"tree": tree, "record": record, "results": results, "stats": stats, "output": output}


def test_eval_matches_the_official_cityscapes_evaluator(eval_run, tmp_path):
    """The official evaluator, run for real on the --cityscapes-results folder, gives the
    same class IoUs, category IoUs and means as the pipeline's own --eval, to 1e-4."""
    results = eval_run["results"]
    written = sorted(p.name for p in results.rglob("*.png"))
    assert written == sorted(p.name for p in CITYSCAPES_FRAMES)  # names the evaluator finds
    for path in results.rglob("*.png"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (1024, 2048) and image.dtype == np.uint8  # full resolution, one channel
        assert set(np.unique(image)) <= {lab.id for lab in LABELS if lab.train_id < 255 or lab.id == 0}
    env = {**os.environ, "CITYSCAPES_DATASET": str(eval_run["tree"]), "CITYSCAPES_RESULTS": str(results),
           "CITYSCAPES_EXPORT_DIR": str(tmp_path)}
    script = ("import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as e\n"
              "e.args.evalInstLevelScore = False  # needs *_instanceIds.png, which the shared data lacks\n"
              "e.main()\n")
    official_run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                  timeout=300)
    assert official_run.returncode == 0, official_run.stdout[-2000:] + official_run.stderr[-2000:]
    official = json.loads((tmp_path / "resultPixelLevelSemanticLabeling.json").read_text())
    ours = eval_run["stats"]["eval"]
    assert ours["frames"] == 3
    for name in CLASS_NAMES:
        theirs = official["classScores"][name]
        mine = ours["classes"][name]["iou"]
        assert (mine is None and math.isnan(theirs)) or mine == pytest.approx(theirs, abs=1e-4), name
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-4)
    for category, theirs in official["categoryScores"].items():
        mine = ours["categories"].get(category)
        assert (mine is None and math.isnan(theirs)) or mine == pytest.approx(theirs, abs=1e-4), category
    assert ours["category_miou"] == pytest.approx(official["averageScoreCategories"], abs=1e-4)
    assert 0.3 < ours["miou"] < 0.95  # a real score, not a degenerate one


def test_live_eval_equals_offline_eval(eval_run, tmp_path):
    """The live status line, the table at the end and stats.json show the numbers that
    ``segstream eval`` computes offline from the recorded masks."""
    stats = eval_run["stats"]["eval"]
    out_json = tmp_path / "offline.json"
    offline_run = run_segstream("eval", str(eval_run["record"]), f"cityscapes:{eval_run['tree']}:val",
                                "--json", str(out_json))
    assert offline_run.returncode == 0, offline_run.stderr
    offline = json.loads(out_json.read_text())
    assert offline["confusion"]["matrix"] == stats["confusion"]["matrix"]
    for key in ("miou", "pixel_accuracy", "mean_f1", "category_miou"):
        assert offline[key] == stats[key], key
    assert offline["classes"] == stats["classes"]
    assert f"mIoU {stats['miou']:5.3f}" in offline_run.stdout
    # live: the status line, drawn in place on the terminal, ends with the final figures
    lines = [line for line in eval_run["output"].split("\r") if "fps" in line and "mIoU" in line]
    assert lines, eval_run["output"][-2000:]
    assert f"mIoU {stats['miou']:.3f}" in lines[-1]
    assert "[####################] 3/3" in lines[-1]
    assert f"mIoU {stats['miou']:5.3f}" in eval_run["output"]  # the table at the end
    # offline on the Cityscapes results (label ids) gives the same again
    as_label_ids = run_segstream("eval", str(eval_run["results"]), f"cityscapes:{eval_run['tree']}:val",
                                 "--label-ids", "--json", str(tmp_path / "ids.json"))
    assert as_label_ids.returncode == 0, as_label_ids.stderr
    assert json.loads((tmp_path / "ids.json").read_text())["miou"] == stats["miou"]
    missing = run_segstream("eval", str(tmp_path), f"cityscapes:{eval_run['tree']}:val")
    assert missing.returncode == 2 and "holds no PNG predictions" in missing.stderr


def test_latency_parts_add_up_per_frame(eval_run):
    """Per frame, stage times plus queueing times equal the end-to-end latency (1 ms), and
    stats.json's per-stage figures are those of the frames."""
    frames = [json.loads(line) for line in (eval_run["record"] / "frames.jsonl").read_text().splitlines()]
    assert [f["index"] for f in frames] == [0, 1, 2]
    workers = sorted(name for name in eval_run["stats"]["stages"] if name.startswith("infer"))
    expected_stages = {f["index"]: ["capture-0", "preprocess", next(w for w in workers if w in f["stages"]), "publish"]
                    for f in frames}  # each frame names the inference worker that took it
    for f in frames:
        assert list(f["stages"]) == expected_stages[f["index"]]
        parts = sum(p["queue_ms"] + p["stage_ms"] for p in f["stages"].values())
        assert abs(parts - f["e2e_ms"]) < 1.0, f
        assert all(p["queue_ms"] >= 0 and p["stage_ms"] >= 0 for p in f["stages"].values())
        assert f["stages"][expected_stages[f["index"]][2]]["stage_ms"] > 10  # a real model ran
    stats = eval_run["stats"]
    breakdown = stats["latency_ms"]["breakdown"]
    for name in ("preprocess", "publish", *workers):
        mine = [f["stages"][name]["stage_ms"] for f in frames if name in f["stages"]]
        assert breakdown[name]["stage"]["median"] == pytest.approx(float(np.median(mine)), abs=1e-3)
        assert breakdown[name]["queue"]["count"] == len(mine)
    assert sum(breakdown[w]["stage"]["count"] for w in workers) == 3
    e2e = [f["e2e_ms"] for f in frames]
    assert stats["latency_ms"]["capture_to_publish"]["max"] == pytest.approx(max(e2e), abs=1e-3)
    source = next(iter(stats["per_source"].values()))
    assert source["latency_ms"]["count"] == 3
    to_render = stats["latency_ms"]["breakdown_to_render"]  # the same split, up to the rendered overlay
    assert list(to_render) == ["capture-0", "preprocess", *workers, "publish", "render"]
    assert to_render["render"]["stage"]["count"] == 3
    # every frame is rendered after it is published, so the order statistics follow
    assert stats["latency_ms"]["capture_to_render"]["median"] > stats["latency_ms"]["capture_to_publish"]["median"]


def test_report_renders_the_plots(eval_run, tmp_path):
    result = run_segstream("report", str(eval_run["record"]), "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    names = {"latency_by_stage.png", "latency_timeline.png", "throughput.png", "class_iou.png",
             "confusion_matrix.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == names
    for name in names:
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 10, name
    # one vocabulary: the report's per-stage figures are stats.json's (and the end table's), render included
    shown = json.loads((tmp_path / "latency_by_stage.json").read_text())
    latency = {**eval_run["stats"]["latency_ms"]["breakdown_to_render"], **eval_run["stats"]["latency_ms"]["breakdown"]}
    workers = sorted(name for name in eval_run["stats"]["stages"] if name.startswith("infer"))
    assert list(shown) == ["capture-0", "preprocess", *workers, "publish", "render"]
    for stage, row in shown.items():
        assert row["in_stage_p50"] == pytest.approx(latency[stage]["stage"]["median"], abs=1e-6), stage
        assert row["queued_p50"] == pytest.approx(latency[stage]["queue"]["median"], abs=1e-6), stage
        assert row["in_stage_p95"] == pytest.approx(latency[stage]["stage"]["p95"], abs=1e-6), stage
        in_table = next(line for line in eval_run["output"].splitlines() if line.strip().startswith(stage + " "))
        assert f"{row['in_stage_p50']:.1f}" in in_table and f"{row['queued_p50']:.1f}" in in_table
    empty = run_segstream("report", str(tmp_path))
    assert empty.returncode == 2 and "no stats.json" in empty.stderr


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def test_prometheus_endpoint_during_a_run(tmp_path, fast_onnx):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(segstream_cmd("run", "--source", "test-pattern:320x240@25", "--model",
                                                 str(fast_onnx), "--publish", "", "--metrics-port", str(port),
                                                 "--max-frames", "150", "--record", str(tmp_path / "rec")),
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        families: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                text = _scrape(port)
            except OSError:
                continue
            families = {f.name: f for f in text_string_to_metric_families(text)}
            published = families.get("segstream_frames_published")
            if published and sum(s.value for s in published.samples) >= 5 \
                    and "segstream_render_latency_seconds" in families:
                break
        assert families, log.read_text()[-2000:]
        assert families["segstream_frames_published"].type == "counter"
        assert families["segstream_frames_in"].samples[0].labels == {"source": "test-pattern"}
        latency = families["segstream_latency_seconds"]
        assert latency.type == "histogram"
        buckets = [s for s in latency.samples if s.name.endswith("_bucket")]
        count = next(s.value for s in latency.samples if s.name.endswith("_count"))
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count >= 5
        assert all(a.value <= b.value for a, b in zip(buckets, buckets[1:]))  # cumulative
        stages = {s.labels["stage"] for s in families["segstream_stage_seconds"].samples}
        # a live run: its inference worker preprocesses
        assert {"capture-0", "publish", "render"} <= stages and any(s.startswith("infer") for s in stages)
        assert families["segstream_render_latency_seconds"].type == "histogram"
        assert families["segstream_run_info"].samples[0].labels["backend"] == "onnxruntime"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
        assert process.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=30)
    with pytest.raises(OSError):  # the endpoint went with the run
        _scrape(port)
    # Every frame is accounted for per source: published, or skipped at a stage for a reason.
    stats = json.loads((tmp_path / "rec" / "stats.json").read_text())
    source = stats["per_source"]["test-pattern"]
    skipped = sum(n for name, reasons in source["skipped_by_stage"].items() if name != "render"
                  for n in reasons.values())
    assert source["frames_in"] == 150 and source["frames_published"] + skipped == 150
    assert source["latency_ms"]["count"] == source["frames_published"] and source["throughput_fps"] > 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _live_stats(published: int) -> dict:
    return {"frames_published": published, "frames_skipped": {"total": 2},
            "latency_ms": {"recent": {"median": 120.4, "p95": 180.9}},
            "stages": {"capture-0": {"frame_count": 100}}, "eval": {"miou": 0.5123}}


def test_status_line_on_a_terminal_and_in_a_log(monkeypatch):
    from segstream.pipeline.telemetry import status_line

    clock = iter(float(t) for t in range(0, 1000, 1))
    monkeypatch.setattr(status_line.time, "monotonic", lambda: next(clock))
    terminal = _Terminal()
    line = status_line.StatusLine(terminal)
    line.update(lambda: _live_stats(10))
    line.update(lambda: _live_stats(30))  # one second later: 20 fps
    line.close()
    drawn = terminal.getvalue()
    assert drawn.count("\r\033[K") == 2 and drawn.endswith("\n")
    last = drawn.split("\r\033[K")[-1]
    assert "[######..............] 32/100 ETA 3s" in last and "20.0 fps" in last
    assert "latency p50 120 ms p95 181 ms" in last and "skipped 2" in last and "mIoU 0.512" in last

    log = io.StringIO()  # not a terminal: a whole line every 10 s, no redraws
    line = status_line.StatusLine(log, loop=True)
    for k in range(30):
        line.update(lambda: _live_stats(k))
    line.close()
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 3 and "\r" not in log.getvalue()
    assert all(" published | " in x for x in lines)  # looping: no progress bar


def test_gt_from_color_writes_where_it_is_told_and_builds_a_layout_that_evaluates(tmp_path, fast_onnx):
    """Without -o the label ids go to the current folder, never beside the input (the shared
    data folder); --cityscapes-root makes a layout --eval replays. A frame without ground
    truth in it is said in the summary, and so is a run where no frame has any."""
    color = DATA / f"{GT_FRAME}_gtFine_color.png"
    here = tmp_path / "cwd"
    here.mkdir()
    done = subprocess.run(segstream_cmd("gt-from-color", str(color)), cwd=here, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in here.iterdir()] == [f"{GT_FRAME}_gtFine_labelIds.png"]
    assert not (DATA / f"{GT_FRAME}_gtFine_labelIds.png").exists()

    root = tmp_path / "cs"
    done = run_segstream("gt-from-color", str(color), "--cityscapes-root", str(root))
    assert done.returncode == 0, done.stderr
    assert (root / "gtFine" / "val" / "frankfurt" / f"{GT_FRAME}_gtFine_labelIds.png").is_file()
    assert (root / "leftImg8bit" / "val" / "frankfurt" / f"{GT_FRAME}_leftImg8bit.png").is_file()
    assert f"--source cityscapes:{root}:val --eval" in done.stdout
    # a second frame without ground truth
    other = CITYSCAPES_FRAMES[0]
    shutil.copyfile(other, root / "leftImg8bit" / "val" / "frankfurt" / other.name)
    record = tmp_path / "rec"
    run = run_segstream("run", "--source", f"cityscapes:{root}:val", "--eval", "--model", str(fast_onnx),
                        "--publish", "", "--record", str(record), "--quiet", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((record / "stats.json").read_text())
    assert stats["eval"]["frames"] == 1 and stats["eval"]["frames_without_gt"] == 1
    assert "evaluation: 1 frame(s) had no ground truth and are not in the scores above (1 scored)" in run.stdout

    bad = run_segstream("gt-from-color", str(tmp_path / "cwd" / f"{GT_FRAME}_gtFine_labelIds.png"),
                        "--cityscapes-root", str(root))
    assert bad.returncode == 2 and "names like frankfurt_000001_058914_gtFine_color.png" in bad.stderr


def test_eval_of_a_source_without_ground_truth_says_so(tmp_path, fast_onnx):
    record = tmp_path / "rec"
    run = run_segstream("run", "--source", "test-pattern:64x48@10", "--max-frames", "3", "--sink", "eval:",
                        "--policy", "lossless", "--model", str(fast_onnx), "--publish", "", "--record", str(record),
                        "--quiet", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "evaluation: none of the 3 published frames had ground truth, nothing was scored" in run.stdout
    stats = json.loads((record / "stats.json").read_text())
    assert stats["eval"] == {"frames": 0, "frames_without_gt": 3}
