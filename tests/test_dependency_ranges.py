"""Every dependency has a tested range, the oldest versions the suite runs on are those
ranges' lower bounds, and ``segstream doctor`` flags a version outside its range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from conftest import run_segstream
from packaging.requirements import Requirement

from segstream.cli.doctor import version_checks

ROOT = Path(__file__).resolve().parent.parent
# Packages whose releases have changed results or broken the suite: each needs an upper bound.
BOUNDED = {"numpy", "opencv-python-headless", "onnxruntime", "onnx", "av", "pyzmq", "torch", "pytest",
           "pytest-xdist", "prometheus-client", "redis", "confluent-kafka", "paho-mqtt", "tritonclient",
           "pycocotools", "matplotlib", "pyyaml"}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += [line for line in extra if not line.startswith("segstream")]
    return {Requirement(line).name.lower().replace("_", "-"): Requirement(line) for line in lines}


def _lower(requirement: Requirement) -> str | None:
    return next((s.version for s in requirement.specifier if s.operator in (">=", "==")), None)


def test_every_dependency_that_moves_results_has_a_lower_and_an_upper_bound():
    requirements = _requirements()
    assert BOUNDED <= set(requirements), BOUNDED - set(requirements)
    for name in BOUNDED:
        operators = {s.operator for s in requirements[name].specifier}
        assert "==" in operators or (">=" in operators and "<" in operators), (name, str(requirements[name]))


def test_the_oldest_constraints_pin_the_lower_bounds():
    """constraints/oldest.txt is what the oldest-versions run installs: a pin per bounded
    package (torch aside: the README pins it), each equal to the range's lower bound (a
    lower bound may leave the patch level out: 1.26 is pinned as 1.26.x)."""
    pins = {}
    for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[name.lower().replace("_", "-")] = version
    requirements = _requirements()
    for name, requirement in requirements.items():
        if name in ("torch", "cityscapesscripts"):
            continue
        lower = _lower(requirement)
        assert name in pins, f"{name} has no pin in constraints/oldest.txt"
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement))
        assert pins[name] == lower or pins[name].startswith(lower + "."), (name, pins[name], lower)


def test_doctor_flags_a_version_outside_its_range():
    import numpy

    checks = version_checks(
        [f"numpy>={numpy.__version__}", "pyzmq<1", 'no-such-extra-pkg>=1; extra == "test"', "no-such-core-pkg>=1"])
    assert len(checks) == 3  # an extra that is not installed is left out
    inside, outside, absent_core = checks
    assert inside.ok and numpy.__version__ in inside.detail
    assert not outside.ok and "outside the tested range <1" in outside.detail
    assert outside.fix == "pip install 'pyzmq<1'"
    assert absent_core.name == "version: no-such-core-pkg" and absent_core.needed and not absent_core.ok


def test_doctor_reports_the_versions_it_found():
    import cv2

    result = run_segstream("doctor", timeout=120)
    line = next(line for line in result.stdout.splitlines() if "version: opencv-python-headless" in line)
    assert cv2.__version__ in line and "tested" in line
