"""``segstream export``, ``build``, ``train`` and ``models``."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    """``segstream export``."""
    from segstream.engines.export import export_onnx

    path = export_onnx(args.model, args.output, args.weights, args.height, args.width, args.confidence, args.dynamic,
                       args.random_weights)
    print(f"wrote {path}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``segstream build``: a cached TensorRT engine from an ONNX model with metadata."""
    from segstream.engines.backends.tensorrt.builder import BuildOptions, build_engine
    from segstream.engines.backends.tensorrt.cache import ShapeProfile
    from segstream.engines.backends.tensorrt.versions import Precision
    from segstream.engines.resolve import resolve_model

    precision = Precision.INT8 if args.int8 else Precision.FP16 if args.fp16 else Precision.FP32
    options = BuildOptions(precision=precision, shapes=ShapeProfile.parse(args.shapes) if args.shapes else None,
                           workspace_gb=args.workspace, max_batch=args.max_batch, calibration_dir=args.calib,
                           output=Path(args.output) if args.output else None, rebuild=args.rebuild)
    onnx_path, _ = resolve_model(args.model)
    path = build_engine(onnx_path, options)
    print(f"engine: {path}\nrun it: segstream run --model {path} --source ...")
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    """``segstream triton-repo``: a Triton model repository entry for a zoo model."""
    from segstream.engines.triton_repo import write_repository

    folder = write_repository(args.model, args.output, args.max_batch, args.instances, args.platform, args.weights,
                              args.name, args.confidence, args.height, args.width, args.random_weights)
    print(f"model repository entry: {folder}\nserve it: tritonserver --model-repository {folder.parent}\n"
          f"run against it: segstream run --backend triton --triton-url grpc://HOST:8001 --model {folder.name} "
          f"--source ...")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``segstream train``: fine-tune or train a zoo model."""
    from segstream.engines.models.zoo import get_model_spec
    from segstream.engines.training.trainer import TrainConfig, Trainer
    from segstream.errors import ModelError

    crop = None
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.lower().split("x"))
        except ValueError:
            crop = ()
        if len(crop) != 2:
            raise ModelError(f"--crop takes HEIGHTxWIDTH, e.g. 512x1024, found {args.crop!r}")
    config = TrainConfig(model=args.model, data=args.data, val=args.val, epochs=args.epochs, repeat=args.repeat,
                         crop=crop, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, resume=args.resume, weights=args.weights,
                         output=args.output, threads=args.threads)
    if get_model_spec(args.model).task == "instances":
        from segstream.engines.training.instances import InstanceTrainer

        history = InstanceTrainer(config).run()
    else:
        history = Trainer(config).run()
    for result in history:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
        print(f"epoch {result.epoch}: loss {result.loss:.4f} ({result.images_per_s:.1f} img/s); {figures}")
    print(f"checkpoints: {args.output}/last.pt, {args.output}/best.pt; export: segstream export {args.model} "
          f"--weights {args.output}/best.pt -o {args.model}.onnx")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``segstream models``: the zoo, one line per model (no torch import unless
    ``--count-params`` builds every model to count its parameters)."""
    from segstream.engines.models.zoo import MODELS

    rows = [("name", "task", "input", "classes", "params", "weights", "description")]
    for spec in MODELS.values():
        meta = spec.metadata
        params = sum(p.numel() for p in spec.build().parameters()) if args.count_params else spec.params
        classes = "+".join(str(n) for n in (meta.num_classes, len(meta.label_names)) if n)
        rows.append((spec.name, spec.task, f"{meta.input_width}x{meta.input_height}", classes, f"{params:,}",
                     "pretrained" if spec.usable_as_is else "needs --weights", spec.description))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    right = {2, 3, 4}  # numbers line up on the right
    for row in rows:
        cells = [cell.rjust(w) if k in right else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join([*cells, row[-1]]))
    print("\n'pretrained': runs as it is (its weights are fetched on first use, checked by sha256). 'needs "
          "--weights': no trained weights are known for it; `segstream run --model NAME` says where they come from, "
          "and --random-weights runs it untrained on purpose.")
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``export``, ``build``, ``train`` and ``models``."""
    p = sub.add_parser("export", help="export a zoo model to ONNX with its metadata")
    p.add_argument("model", help="zoo model name")
    p.add_argument("-o", "--output", required=True, help="FILE.onnx")
    p.add_argument("--weights", help="weights file (default: lookup)")
    p.add_argument("--height", type=int, help="input height (default: the model's own)")
    p.add_argument("--width", type=int, help="input width (default: the model's own)")
    p.add_argument("--confidence", action="store_true", help="add a per-pixel confidence output")
    p.add_argument("--dynamic", action="store_true", help="dynamic input height and width")
    p.add_argument("--random-weights", action="store_true", help="export a model that has no trained weights "
                   "untrained, on purpose (its metadata says so; every run of it warns)")
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
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="largest batch of frames (of several "
                   "sources, --batch) the engine takes, for an ONNX with a dynamic batch axis (default 8)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the engine (and its sidecars) here")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository for a zoo model")
    p.add_argument("model", help="zoo model name")
    p.add_argument("-o", "--output", required=True, metavar="REPO", help="the model repository folder")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="max_batch_size (dynamic batching; default 8)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    p.add_argument("--platform", choices=("onnxruntime", "tensorrt", "python"), default="onnxruntime",
                   help="ONNX Runtime backend, a TensorRT plan (built here), or a Python-backend model running "
                        "ONNX Runtime (default onnxruntime)")
    p.add_argument("--name", help="the model's name on the server (default: the zoo name)")
    p.add_argument("--weights", metavar="FILE", help="weights file (default: lookup, see README)")
    p.add_argument("--random-weights", action="store_true", help="serve a model that has no trained weights "
                   "untrained, on purpose")
    p.add_argument("--confidence", action="store_true", help="add the confidence output")
    p.add_argument("--height", type=int, help="model input height (default: the model's own)")
    p.add_argument("--width", type=int, help="model input width (default: the model's own)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_triton_repo)

    p = sub.add_parser("train", help="fine-tune or train a zoo model")
    p.add_argument("model", help="zoo model name")
    p.add_argument("--data", required=True, help="cityscapes:ROOT[:SPLIT], kitti-semantics:ROOT, kitti360:ROOT:SEQ, "
                                                 "or ROOT/<label>/*.png for classifiers and joint models; instance "
                                                 "models: coco:ROOT[:SPLIT] (COCO JSON) or cityscapes:ROOT[:SPLIT] "
                                                 "(gtFine_instanceIds.png)")
    p.add_argument("--val", help="validation data (default: the training data)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="passes over the data per epoch (tiny datasets)")
    p.add_argument("--crop", metavar="HxW", help="training crop (default: the model's input size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (poly decay)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="sgd: momentum 0.9 (Mask R-CNN trains best with --optimizer sgd --lr 0.02)")
    p.add_argument("--weights", help="start from these weights (default: the pretrained ones, if any)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    p.add_argument("-o", "--output", default="segstream-train", help="checkpoint folder")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the models segstream knows")
    p.add_argument("--count-params", action="store_true", help="build every model and count its parameters "
                   "(imports torch; the listed counts come from the zoo table)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_models)
