"""Install the project's dependencies from pyproject.toml, torch first.

The Dockerfile and `scripts/install.sh` both call this, so the image and a developer's virtual
environment are built by the same steps. torch goes first and alone: installed later, as a
dependency of another package, pip would pick the default build from PyPI, which on Linux is a
multi-GB CUDA build.

    python scripts/install_deps.py                      # runtime dependencies
    python scripts/install_deps.py --extra test         # and the test dependencies
    python scripts/install_deps.py --torch-index-url URL  # torch from another index (CPU or CUDA wheels)
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
DEFAULT_TORCH_VERSION = "2.13.0"


def read_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Return the dependencies, then those of each extra, as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r} in {pyproject}; known: {', '.join(sorted(optional))}")
        requirements += optional[extra]
    return requirements


def is_torch(requirement: str) -> bool:
    return re.match(r"^torch\b(?![-_.\w])", requirement) is not None


def pip_commands(args: argparse.Namespace) -> list[list[str]]:
    """Build the pip invocations: torch pinned alone, then every other requirement."""
    pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir"]
    torch = [*pip, f"torch=={args.torch_version}"]
    if args.torch_index_url:
        torch += ["--index-url", args.torch_index_url]
    rest = [r for r in read_requirements(args.pyproject, args.extra) if not is_torch(r)]
    return [torch, [*pip, *rest]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="optional dependency group to add")
    parser.add_argument("--torch-version", default=DEFAULT_TORCH_VERSION, help="torch release to pin")
    parser.add_argument("--torch-index-url", default="", help="package index for torch (default: pip's)")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT, help="project file to read")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands and run nothing")
    args = parser.parse_args(argv)

    for command in pip_commands(args):
        print("+", shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
