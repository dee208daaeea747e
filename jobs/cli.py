"""The ``clipsr`` console script: ``clipsr <command> ...`` runs ``jobs.<command>.main``.

Commands import lazily, so ``clipsr --help`` stays fast and each command pulls in only what it
needs.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "preprocess": ("jobs.preprocess", "shard a captioned corpus into WebDataset shards (Ray Data)"),
    "pretrain-clip": (
        "jobs.pretrain_clip",
        "train a domain CLIP on a shard set (Ray Train, MLflow)",
    ),
    "train": ("jobs.train", "train the generator and discriminator on Ray Train (MLflow)"),
    "evaluate": ("jobs.evaluate", "evaluate a model on test shards (PSNR/SSIM/LPIPS, captions)"),
    "promote": ("jobs.promote", "move the champion alias to a model version behind metric gates"),
    "upscale": ("jobs.upscale", "upscale images or shard sets with a model, guided by prompts"),
    "demo": ("jobs.demo", "the whole pipeline on bundled data: shard, train, evaluate, promote"),
    "convert-reference": (
        "jobs.convert_reference",
        "the authors' released state_epoch_*.pth as a clipsr checkpoint",
    ),
}


def usage() -> str:
    lines = ["usage: clipsr <command> [args...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'clipsr <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"clipsr: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
