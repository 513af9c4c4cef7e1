"""The `axm` command line: one subcommand per job, each defined by the module that does the work.

A command module exposes `add_arguments(parser)` and `run(args) -> int` (the exit status). Modules are
imported only when their subcommand runs, so `axm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# subcommand: (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.commands.serve", "run the HTTP service"),
    "search": ("service.commands.search", "search the gallery by description and print a ranked table"),
    "ingest": ("service.commands.ingest", "bulk-ingest a folder or CSV of crops into the gallery"),
    "reindex": ("service.commands.reindex", "re-embed every stored crop with another checkpoint"),
    "migrate": ("service.commands.migrate", "copy a gallery from one backend to another"),
    "train": ("model.train", "train AXM-Net or the baseline on CUHK-PEDES-format data"),
    "evaluate": ("model.evaluate", "evaluate a checkpoint: Rank-1/5/10, mAP, mINP"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the module of the requested subcommand is imported."""
    parser = argparse.ArgumentParser(prog="axm", description="Text-to-person search with AXM-Net.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    requested = next((arg for arg in argv if arg in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == requested:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `axm` console script."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # FAISS logs each CPU-specific build it fails to import, and httpx every request; neither is news
    # to an operator at INFO.
    for name in ("faiss.loader", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
