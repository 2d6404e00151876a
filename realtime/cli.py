"""The ``avatar`` command. Each subcommand lives in the module that owns the work.

Modules are imported only when their command runs, so ``avatar --help`` stays fast
and a command never pays for torch or aiortc it does not use. Each module exposes
``cli_main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("realtime.app", "run the WebRTC + HTTP server"),
    "generate": ("realtime.offline", "make an MP4 from an image and an audio file (or a folder of them)"),
    "register": ("realtime.avatar", "register a portrait and cache its avatar bundle"),
    "data": ("realtime.corpus", "build the speech corpus used for training (avatar data build)"),
    "train": ("realtime.train", "train the motion model and export it to ONNX"),
    "eval": ("realtime.evaluate", "evaluate lip sync on held-out speech (avatar eval lipsync)"),
    "bench": (
        "realtime.benchmarks",
        "run a benchmark: live, browser, receive, motion, render, offline, load",
    ),
}


def _usage() -> str:
    lines = ["usage: avatar COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Run 'avatar COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"avatar: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
