"""Helpers shared by the service's subcommands: settings from the environment plus command-line overrides."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from service.settings import Settings


class SettingsRejected(Exception):
    """Raised when the settings from the environment and the command line are invalid; the message lists why."""


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that locate the model and the gallery (each overrides its AXM_ variable)."""
    parser.add_argument(
        "--data-dir", help="gallery data directory (overrides AXM_DATA_DIR; default ./axm-data)"
    )
    parser.add_argument("--checkpoint", help="model checkpoint .safetensors (overrides AXM_CHECKPOINT)")
    parser.add_argument("--device", help="torch device, for example cpu or cuda:0 (overrides AXM_DEVICE)")


def store_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings given on the command line, by field name."""
    names = ("data_dir", "checkpoint", "device")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment with `overrides` on top, or raise `SettingsRejected`."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        reasons = "; ".join(error["msg"].removeprefix("Value error, ") for error in e.errors())
        raise SettingsRejected(f"invalid settings: {reasons}") from e


def fail(command: str, message: str) -> int:
    """Print an error for people on stderr and return exit status 2."""
    print(f"axm {command}: {message}", file=sys.stderr)
    return 2
