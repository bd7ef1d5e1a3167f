"""The ``das2f`` command (also ``python -m das2f``): one console command for every task.

    das2f train [hydra overrides]      prepare, fit, test the best-on-validation checkpoint
    das2f eval ckpt_path=...           test metrics of a checkpoint
    das2f predict ckpt_path=...        full-scene classification maps
    das2f prepare [inspect=true]       cut a dataset's scenes into HDF5 patch pairs
    das2f report DIR | --latest        the results table of sweeps
    das2f checkpoint OLD NEW           convert a checkpoint of an older das2f

Each command is exactly ``python -m das2f.<command>`` (same overrides, run directories and log
files); ``das2f <command> --help`` shows its own help. Nothing heavy is imported here.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "prepare, fit, test the best-on-validation checkpoint (Hydra overrides)",
    "eval": "test metrics of a checkpoint: ckpt_path=<run dir>/checkpoints/epoch_NNN.ckpt",
    "predict": "full-scene classification maps of a dataset's scenes: ckpt_path=... [scenes=[a,b]]",
    "prepare": "cut a dataset's scenes into HDF5 patch pairs (inspect=true: list sizes and label values)",
    "report": "Markdown + CSV results table of sweeps: DIR [DIR ...] | --latest",
    "checkpoint": "convert a checkpoint of an older das2f: OLD.ckpt NEW.ckpt",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return ("usage: das2f <command> [arguments]\n\ncommands:\n" + "\n".join(lines) +
            "\n\n`das2f <command> --help` shows a command's own options (Hydra's for train/eval/predict/prepare).")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"das2f: unknown command {command!r}; the commands are {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"das2f {command}", *rest]  # Hydra and argparse read the overrides from sys.argv
    importlib.import_module(f"das2f.{command}").main()


if __name__ == "__main__":
    main()
