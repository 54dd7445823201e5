"""Pieces shared by command modules: config loading, output, progress."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.config import ClusterConfig, Config, load_config


def load(args: argparse.Namespace) -> tuple[Config, ClusterConfig]:
    config = load_config(args.config)
    return config, config.cluster(args.cluster)


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", choices=("text", "json"), default="text", help="output format")


def print_json(doc: Any) -> None:
    import json

    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class ProgressBar:
    """A progress line on a terminal; nothing when stderr is not a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and (done < total or not total):
            return
        self.last = now
        rate = f" {human_bytes(int(done / max(now - self.started, 1e-6)))}/s "
        if not total:  # not known yet (a backup still walking the data directory)
            sys.stderr.write(f"\r{self.label} {human_bytes(done)}{rate}")
        else:
            frac = min(done / total, 1.0)
            width = 30
            bar = "#" * int(frac * width)
            sys.stderr.write(f"\r{self.label} [{bar:<{width}}] {frac * 100:5.1f}% "
                             f"{human_bytes(done)} / {human_bytes(total)}{rate}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
