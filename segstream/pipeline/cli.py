"""The ``segstream`` command line.

::

    segstream run  [--config FILE] [--source SRC]... [--model NAME|FILE] [--weights FILE]
                   [--policy live|lossless] [--record DIR] [--publish ENDPOINT] [--max-frames N]
    segstream consume ENDPOINT [--count N] [--save DIR]
    segstream export MODEL -o FILE.onnx
    segstream build MODEL.onnx [--fp16|--int8 --calib DIR] [--shapes MIN:OPT:MAX] [--workspace GB] [-o FILE]
    segstream train MODEL --data DATASET [--epochs N] [--crop HxW] [--resume CKPT]
    segstream models
    segstream demo [--record DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

DEMO_RECORD = "segstream-demo"


def _setup_logging(verbose: bool) -> None:
    level = "DEBUG" if verbose else os.environ.get("SEGSTREAM_LOG_LEVEL", "INFO").upper()
    os.environ["SEGSTREAM_LOG_LEVEL"] = level
    logging.basicConfig(level=level, format="%(asctime)s supervisor %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); flags override it")
    p.add_argument("--source", action="append", dest="sources", metavar="SRC",
                   help="video file, image folder, glob, test-pattern[:WxH[@FPS]], rtsp://..., camera:N, "
                        "/dev/videoN or a dataset (cityscapes:ROOT, kitti-raw:DIR, ...); repeat for several")
    p.add_argument("--model", help="zoo model name (segstream models) or an .onnx file with metadata")
    p.add_argument("--weights", help="weights file for a zoo model (default: lookup, see README)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                   help="inference backend (default auto: TensorRT, else ONNX Runtime CUDA, else ONNX Runtime CPU)")
    p.add_argument("--precision", choices=["fp32", "fp16"], help="GPU backends: engine precision (default fp32)")
    p.add_argument("--providers", metavar="P,P", help="ONNX Runtime providers in order, e.g. tensorrt,cuda,cpu")
    p.add_argument("--cuda-graph", action="store_true", default=None, help="torch on CUDA: replay a CUDA graph")
    p.add_argument("--policy", choices=["live", "lossless"], help="flow policy (default: lossless for files, "
                                                                     "live for live sources)")
    p.add_argument("--record", metavar="DIR", help="write masks/, overlay.mp4 and stats.json here")
    p.add_argument("--publish", metavar="ENDPOINT", help="results PUB endpoint ('' for none; default "
                                                         "tcp://127.0.0.1:5560)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    p.add_argument("--mask-encoding", choices=["raw", "png", "rle"], help="published mask encoding (default raw)")
    p.add_argument("--mask-resolution", choices=["frame", "model"], help="publish masks at frame (default) or model "
                                                                         "resolution")
    p.add_argument("--confidence", action="store_true", default=None, help="publish a per-pixel confidence map "
                                                                          "(uint8) with each mask")
    p.add_argument("--publish-lossless", metavar="ENDPOINT", help="also a PUSH channel for one consumer that must "
                                                                  "get every mask (backpressure)")
    p.add_argument("--rate", metavar="native|N|max", help="replay pacing: the dataset's own timing, N frames per "
                                                          "second, or as fast as possible (default: max in lossless "
                                                          "flow, native in live flow)")
    p.add_argument("--loop", action="store_true", default=None, help="start video files over at their end")
    p.add_argument("--rtsp-transport", choices=["tcp", "udp"], help="RTSP transport (default tcp)")
    p.add_argument("--connect-attempts", type=int, metavar="N", help="give up a stream that never opens after N "
                                                                     "attempts (default 5)")
    p.add_argument("--camera-size", metavar="WxH", help="frame size to ask cameras for, e.g. 1280x720")
    p.add_argument("--camera-fps", type=float, metavar="N", help="frame rate to ask cameras for")
    p.add_argument("--transport", choices=["ipc", "tcp"], help="ipc (shared memory, default) or tcp (inline)")
    p.add_argument("--workers", type=int, help="parallel inference processes (0 = auto)")
    p.add_argument("--threads", type=int, help="threads per inference process (0 = auto)")
    p.add_argument("--opacity", type=float, help="overlay opacity 0-1 (default 0.5)")
    p.add_argument("--render-mode", choices=["blend", "mask", "side-by-side"], help="what the overlay shows")
    p.add_argument("--classes", help="colour only these classes, e.g. road,car (names or ids)")
    p.add_argument("--no-legend", dest="legend", action="store_false", default=None, help="no legend")
    p.add_argument("--view", nargs="?", const="127.0.0.1:8080", metavar="HOST:PORT",
                   help="live view in a browser (default 127.0.0.1:8080)")
    p.add_argument("--rtsp-out", metavar="rtsp://HOST:PORT/PATH", help="push the overlay as H.264 to an RTSP server")
    p.add_argument("--display", action="store_true", default=None, help="show the overlay in a window")
    p.add_argument("--eval", action="store_true", default=None, help="score masks against the sources' ground "
                   "truth as they are made (IoU, accuracy, F1; live and in stats.json)")
    p.add_argument("--cityscapes-results", metavar="DIR", help="write predictions for the official Cityscapes "
                   "evaluation (label ids, full resolution)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics at "
                   "http://127.0.0.1:N/metrics")
    p.add_argument("--quiet", "-q", action="store_true", default=None, help="no live status line")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_config(args: argparse.Namespace):
    from segstream.pipeline.config import ConfigError, load_config

    config = load_config(args.config)
    live = dict(config.live)
    if args.rtsp_transport:
        live["rtsp_transport"] = args.rtsp_transport
    if args.connect_attempts:
        live["connect_attempts"] = args.connect_attempts
    if args.camera_size:
        try:
            live["width"], live["height"] = (int(v) for v in args.camera_size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--camera-size must be WIDTHxHEIGHT, e.g. 1280x720, found {args.camera_size!r}") from None
    if args.camera_fps:
        live["fps"] = args.camera_fps
    return config.with_overrides(
        live=live,
        sources=tuple(args.sources) if args.sources else None, model=args.model, weights=args.weights,
        policy=args.policy, record=args.record, publish=args.publish, max_frames=args.max_frames,
        rate=args.rate, loop=args.loop, mask_encoding=args.mask_encoding, mask_resolution=args.mask_resolution,
        publish_lossless=args.publish_lossless, render_mode=args.render_mode, legend=args.legend, view=args.view,
        rtsp_out=args.rtsp_out, display=args.display, confidence=args.confidence,
        render_classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
        transport=args.transport, workers=args.workers, threads=args.threads, opacity=args.opacity,
        backend=args.backend, precision=args.precision, cuda_graph=args.cuda_graph,
        providers=tuple(p.strip() for p in args.providers.split(",")) if args.providers else None,
        eval=args.eval, cityscapes_results=args.cityscapes_results, metrics_port=args.metrics_port, quiet=args.quiet,
    )


def _execute(config) -> int:
    from segstream.engines.resolve import resolve_inference
    from segstream.evaluation.commands import check_scorable
    from segstream.pipeline.run_summary import format_summary, write_stats
    from segstream.pipeline.supervisor import Supervisor

    model = resolve_inference(config.model, config.weights, config.confidence, config.backend, config.precision,
                              config.providers, config.cuda_graph)
    check_scorable(config, model.metadata)
    if config.record:
        Path(config.record).mkdir(parents=True, exist_ok=True)
    if config.view:
        print(f"live view: http://{config.view}/")
    result = Supervisor(config, model).run()
    if config.record:
        path = write_stats(result.stats, config.record)
        result.stats["stats_file"] = str(path)
    print(format_summary(result.stats))
    if config.record:
        print(f"  outputs in {config.record}/ (masks/, overlay.mp4, stats.json)")
    if result.error:
        print(f"segstream: pipeline failed: {result.error}", file=sys.stderr)
    return result.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    """``segstream run``."""
    return _execute(_run_config(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """``segstream demo``: the sample dash-cam clip through the pretrained ESPNet."""
    from segstream.assets import resolve_asset
    from segstream.pipeline.config import PipelineConfig

    clip = resolve_asset("solidWhiteRight.mp4")
    config = PipelineConfig(sources=(str(clip),), model="espnet-cityscapes", record=args.record,
                            publish=args.publish or "", max_frames=args.max_frames or 0)
    print(f"segstream demo: {clip.name} through espnet-cityscapes; recording to {args.record}/")
    return _execute(config)


def cmd_consume(args: argparse.Namespace) -> int:
    """``segstream consume``."""
    from segstream.pipeline.consume import ConsumeOptions, consume

    return consume(ConsumeOptions(args.endpoint, args.count, args.save, args.timeout, args.lossless))


def cmd_export(args: argparse.Namespace) -> int:
    """``segstream export``."""
    from segstream.engines.export import export_onnx

    path = export_onnx(args.model, args.output, args.weights, args.height, args.width, args.confidence, args.dynamic)
    print(f"wrote {path}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``segstream build``: a cached TensorRT engine from an ONNX model with metadata."""
    from segstream.engines.resolve import resolve_model
    from segstream.engines.trt.builder import BuildOptions, build_engine
    from segstream.engines.trt.cache import ShapeProfile
    from segstream.engines.trt.versions import Precision

    precision = Precision.INT8 if args.int8 else Precision.FP16 if args.fp16 else Precision.FP32
    options = BuildOptions(precision=precision, shapes=ShapeProfile.parse(args.shapes) if args.shapes else None,
                           workspace_gb=args.workspace, calibration_dir=args.calib,
                           output=Path(args.output) if args.output else None, rebuild=args.rebuild)
    onnx_path, _ = resolve_model(args.model)
    path = build_engine(onnx_path, options)
    print(f"engine: {path}\nrun it: segstream run --model {path} --source ...")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``segstream train``: fine-tune or train a zoo model."""
    from segstream.engines.metadata import ModelError
    from segstream.engines.training.trainer import TrainConfig, Trainer

    crop = None
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.lower().split("x"))
        except ValueError:
            crop = ()
        if len(crop) != 2:
            raise ModelError(f"--crop takes HEIGHTxWIDTH, e.g. 512x1024, found {args.crop!r}")
    config = TrainConfig(model=args.model, data=args.data, val=args.val, epochs=args.epochs, repeat=args.repeat,
                         crop=crop, batch_size=args.batch_size, lr=args.lr, resume=args.resume, weights=args.weights,
                         output=args.output, threads=args.threads)
    history = Trainer(config).run()
    for result in history:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
        print(f"epoch {result.epoch}: loss {result.loss:.4f} ({result.images_per_s:.1f} img/s); {figures}")
    print(f"checkpoints: {args.output}/last.pt, {args.output}/best.pt; export: segstream export {args.model} "
          f"--weights {args.output}/best.pt -o {args.model}.onnx")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``segstream models``: the zoo, one line per model."""
    from segstream.engines.zoo import MODELS

    print(f"{'name':<26} {'task':<14} {'input':>9} {'classes':>9} {'params':>11}  weights     description")
    for spec in MODELS.values():
        meta = spec.metadata
        params = f"{sum(p.numel() for p in spec.build().parameters()):,}" if not args.no_params else "-"
        weights = "pretrained" if spec.weights_asset else "none"
        classes = "+".join(str(n) for n in (meta.num_classes, len(meta.label_names)) if n)
        print(f"{spec.name:<26} {spec.task:<14} {meta.input_width:>4}x{meta.input_height:<4} {classes:>9} "
              f"{params:>11}  {weights:<11} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``segstream``."""
    parser = argparse.ArgumentParser(prog="segstream", description="Streaming video segmentation over ZeroMQ.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline on sources")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the sample dash-cam clip through the pretrained Cityscapes model")
    p.add_argument("--record", default=DEMO_RECORD, metavar="DIR", help=f"output folder (default {DEMO_RECORD})")
    p.add_argument("--publish", metavar="ENDPOINT", help="also publish masks here")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("consume", help="print (and save) the masks a pipeline publishes")
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5560")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N masks")
    p.add_argument("--save", metavar="DIR", help="write masks as DIR/<source>/<frame>.png")
    p.add_argument("--timeout", type=float, default=0.0, metavar="S", help="give up after S s of silence")
    p.add_argument("--lossless", action="store_true", help="ENDPOINT is a pipeline's --publish-lossless channel")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("export", help="export a zoo model to ONNX with its metadata")
    p.add_argument("model", help="zoo model name")
    p.add_argument("-o", "--output", required=True, help="FILE.onnx")
    p.add_argument("--weights", help="weights file (default: lookup)")
    p.add_argument("--height", type=int, help="input height (default: the model's own)")
    p.add_argument("--width", type=int, help="input width (default: the model's own)")
    p.add_argument("--confidence", action="store_true", help="add a per-pixel confidence output")
    p.add_argument("--dynamic", action="store_true", help="dynamic input height and width")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="build a TensorRT engine (cached per GPU) from an ONNX model")
    p.add_argument("model", help="ONNX file with segstream metadata (or a zoo model name)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 engine")
    precision.add_argument("--int8", action="store_true", help="INT8 engine (needs --calib)")
    p.add_argument("--calib", metavar="DIR", help="folder of frames for INT8 calibration")
    p.add_argument("--shapes", metavar="MIN:OPT:MAX", help="input sizes HxW for a dynamic ONNX, e.g. "
                                                             "256x512:512x1024:1024x2048")
    p.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="builder workspace limit (default 4)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the engine (and its sidecars) here")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="fine-tune or train a zoo model")
    p.add_argument("model", help="zoo model name")
    p.add_argument("--data", required=True, help="cityscapes:ROOT[:SPLIT], kitti-semantics:ROOT, kitti360:ROOT:SEQ, "
                                                 "or ROOT/<label>/*.png for classifiers and joint models")
    p.add_argument("--val", help="validation data (default: the training data)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="passes over the data per epoch (tiny datasets)")
    p.add_argument("--crop", metavar="HxW", help="training crop (default: the model's input size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (poly decay)")
    p.add_argument("--weights", help="start from these weights (default: the pretrained ones, if any)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    p.add_argument("-o", "--output", default="segstream-train", help="checkpoint folder")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_train)

    from segstream.evaluation.commands import add_parsers

    add_parsers(sub)

    p = sub.add_parser("models", help="list the models segstream knows")
    p.add_argument("--no-params", action="store_true", help="skip counting parameters (no torch import)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segstream`` command."""
    from segstream.assets import AssetError
    from segstream.engines.metadata import ModelError
    from segstream.pipeline.config import ConfigError
    from segstream.pipeline.sources import SourceError
    from segstream.pipeline.transport import EndpointError

    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (AssetError, ModelError, ConfigError, SourceError, EndpointError) as exc:
        print(f"segstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
