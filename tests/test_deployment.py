"""The fleet layout in deploy/: every segstream command line in the compose file and the
Kubernetes manifests parses with segstream's own CLI parser (and a run's flags or config
make a valid run configuration), and every manifest is YAML of the kinds it declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from segstream.cli import build_parser
from segstream.pipeline.config import load_config

DEPLOY = ROOT / "deploy"
KINDS = {("v1", "Service"), ("v1", "ConfigMap"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"),
         ("batch/v1", "Job")}


def check_command(command: list[str], configs: dict[str, str], tmp_path: Path) -> str:
    """Parse a container's command with segstream's parser; returns the subcommand."""
    assert command[0] == "segstream", command
    argv = [arg.replace("${SEGSTREAM_API_TOKEN}", "token") for arg in command[1:]]
    if "--config" in argv:  # a ConfigMap's file, mounted: check it as the run will read it
        at = argv.index("--config") + 1
        local = tmp_path / Path(argv[at]).name
        local.write_text(configs[argv[at]])
        argv[at] = str(local)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from segstream.cli.run import run_config

        config = run_config(args)
        assert config.sources and config.backend.value == "triton"
        assert any(uri.startswith("redis://") for uri in config.sinks)
    return args.command


def test_compose_commands_parse(tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"triton", "redis", "consumer"} <= set(services)
    commands = [s["command"] for s in services.values() if s.get("command", [""])[0] == "segstream"]
    seen = [check_command(c, {}, tmp_path) for c in commands]
    assert seen.count("run") == 2 and "consume" in seen and "triton-repo" in seen  # two pipelines
    runs = [c for c in commands if c[1] == "run"]
    assert all(c.count("--source") == 2 for c in runs)  # two cameras each


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests(path, tmp_path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    configs: dict[str, str] = {}
    for doc in documents:
        assert (doc["apiVersion"], doc["kind"]) in KINDS, (path.name, doc.get("kind"))
        assert doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":
            for name, text in doc["data"].items():
                configs[f"/etc/segstream/{name}"] = text
                load_config(_written(tmp_path, name, text))  # a valid run config
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            if doc["kind"] == "Deployment":
                assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"][
                    "labels"].items()
            for container in spec["containers"]:
                if container.get("command", [""])[0] == "segstream":
                    check_command(container["command"], configs, tmp_path)


def _written(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
