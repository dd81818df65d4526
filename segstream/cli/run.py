"""``segstream run``, ``segstream demo`` and ``segstream consume``.

``run``'s flags are made from the declared settings of ``PipelineConfig``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segstream.errors import ConfigError
from segstream.pipeline.config import PipelineConfig, load_config
from segstream.pipeline.settings import add_flags, overrides_from_args

DEMO_RECORD = "segstream-demo"
DEMO_MODEL = "espnet-cityscapes"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``run``'s flags: ``--config`` plus one per declared setting."""
    p.add_argument("--config", help="YAML config (see configs/); flags override it")
    add_flags(p, PipelineConfig)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run_config(args: argparse.Namespace) -> PipelineConfig:
    """The config of ``segstream run``: the YAML file (or the defaults), then the flags."""
    overrides = overrides_from_args(PipelineConfig, args)
    config = load_config(args.config).with_overrides(**overrides)
    if "sources" not in overrides and config.sources == PipelineConfig().sources and config.api:
        return config.with_overrides(sources=())  # a service: sources come through the API
    if "sources" not in overrides and config.sources == PipelineConfig().sources:
        print(f"segstream run: no --source given: running the built-in {config.sources[0]} (synthetic, live, until "
              f"Ctrl-C or --max-frames); pass --source FILE|DIR|GLOB|rtsp://...|camera:N", file=sys.stderr)
    return config


def _execute(config: PipelineConfig) -> int:
    from segstream.engines.resolve import resolve_inference
    from segstream.pipeline.preflight import check_outputs, check_scorable
    from segstream.pipeline.supervisor import Supervisor
    from segstream.pipeline.telemetry.run_summary import format_summary, write_stats

    check_outputs(config)  # before the model loads: a wrong path is known at once
    model = resolve_inference(config.model, config.weights, config.confidence, config.backend, config.precision,
                              config.providers, config.cuda_graph, config.triton_url, config.triton_shm,
                              config.random_weights)
    check_scorable(config, model.metadata)
    if model.metadata.untrained_warning:
        print(f"segstream: warning: {model.metadata.untrained_warning}", file=sys.stderr)
    if config.view:
        print(f"live view: http://{config.view}/")
    if config.api:
        from segstream.pipeline.config import api_address

        host, port = api_address(config.api, config.api_token)
        if port:
            print(f"control API: http://{host}:{port}/api/sources (segstream sources list --api {host}:{port})")
    result = Supervisor(config, model).run()
    # The record folder is made by the first output written, or here for a run that
    # started: a run that failed before it started leaves no empty folder behind.
    if config.record and (result.started or Path(config.record).is_dir()):
        path, problem = write_stats(result.stats, config.record)
        result.stats["stats_file"] = str(path)
        if problem:
            print(f"segstream: could not write stats.json into {config.record} ({problem}): stats.json written to "
                  f"{path} instead", file=sys.stderr)
    print(format_summary(result.stats))
    if config.record and Path(config.record).is_dir():
        print(f"  outputs in {config.record}/: {describe_outputs(Path(config.record))}")
    if result.error:
        print(f"segstream: pipeline failed: {result.error}", file=sys.stderr)
    return result.exit_code


def describe_outputs(folder: Path) -> str:
    """What a run wrote in its record folder, one level down: ``stats.json, cam1/ (masks/,
    overlay.mp4)``; a folder of frames is named, not listed."""

    def name(entry: Path) -> str:
        return f"{entry.name}/" if entry.is_dir() else entry.name

    items = []
    for entry in sorted(folder.iterdir()):
        inner = sorted(entry.iterdir()) if entry.is_dir() else []
        if any(child.is_dir() or child.suffix in (".mp4", ".json", ".jsonl") for child in inner):
            items.append(f"{name(entry)} ({', '.join(name(child) for child in inner)})")
        else:
            items.append(name(entry))
    return ", ".join(items) or "nothing"


def cmd_run(args: argparse.Namespace) -> int:
    """``segstream run``."""
    return _execute(run_config(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """``segstream demo``: the sample dash-cam clip through the pretrained ESPNet."""
    from segstream.assets import resolve_asset
    from segstream.engines.export import needs_weights
    from segstream.errors import AssetError

    needed = ["solidWhiteRight.mp4", *filter(None, [needs_weights(DEMO_MODEL)])]
    found, missing = {}, []
    for name in needed:  # every missing file named at once, not one per try
        try:
            found[name] = resolve_asset(name)
        except AssetError as exc:
            missing.append(f"  - {exc}")
    if missing:
        raise AssetError(f"the demo needs {len(missing)} file(s) that are not here:\n" + "\n".join(missing))
    clip = found["solidWhiteRight.mp4"]
    config = PipelineConfig(sources=(str(clip),), model=DEMO_MODEL, record=args.record,
                            publish=args.publish or "", max_frames=args.max_frames or 0)
    print(f"segstream demo: {clip.name} through {DEMO_MODEL}; recording to {args.record}/")
    return _execute(config)


def cmd_consume(args: argparse.Namespace) -> int:
    """``segstream consume``."""
    from segstream.pipeline.consume import ConsumeOptions, consume
    from segstream.pipeline.wire.keys import load_client

    if bool(args.server_key) != bool(args.client_key):
        raise ConfigError("--server-key and --client-key go together (the server's public key file and this "
                          "consumer's .key_secret file, from 'segstream keys DIR --client NAME')")
    curve = load_client(args.server_key, args.client_key) if args.server_key else None
    return consume(ConsumeOptions(args.endpoint, args.count, args.save, args.timeout, args.lossless, curve))


def cmd_keys(args: argparse.Namespace) -> int:
    """``segstream keys``."""
    from segstream.pipeline.wire.keys import write_keys

    for path in write_keys(args.folder, args.client or ""):
        print(path)
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``run``, ``demo`` and ``consume``."""
    p = sub.add_parser("run", help="run the pipeline on sources")
    add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the sample dash-cam clip through the pretrained Cityscapes model")
    p.add_argument("--record", default=DEMO_RECORD, metavar="DIR", help=f"output folder (default {DEMO_RECORD})")
    p.add_argument("--publish", metavar="ENDPOINT", help="also publish masks here")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("consume", help="print (and save) the masks a pipeline publishes")
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5560, or a broker the pipeline writes to: "
                   "redis://HOST:6379/KEY, kafka://HOST:9092/TOPIC, mqtt://HOST:1883/TOPIC (?from=start: what it holds)")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N masks")
    p.add_argument("--save", metavar="DIR", help="write masks as DIR/<source>/<frame>.png")
    p.add_argument("--timeout", type=float, default=0.0, metavar="S", help="give up after S s of silence")
    p.add_argument("--lossless", action="store_true", help="ENDPOINT is a pipeline's --publish-lossless channel")
    p.add_argument("--server-key", metavar="FILE", help="the pipeline's public key (server.key) for a tcp:// "
                   "endpoint published with --publish-keys")
    p.add_argument("--client-key", metavar="FILE", help="this consumer's key pair (NAME.key_secret)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("keys", help="create CURVE keys for --publish-keys (server, and a consumer with --client)")
    p.add_argument("folder", help="the keys folder (server.key, server.key_secret, authorized/)")
    p.add_argument("--client", metavar="NAME", help="also a consumer's key pair, authorised in the folder")
    p.set_defaults(func=cmd_keys)
