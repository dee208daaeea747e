"""The ``clipsr`` console script: ``clipsr <command> ...`` runs ``jobs.<command>.main``.

Commands import lazily, so ``clipsr --help`` and ``clipsr <command> --help`` stay fast and each
command pulls in only what it needs.
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
    "config": ("jobs.config_show", "print a job's resolved configuration (config show JOB ...)"),
}


def usage() -> str:
    lines = ["usage: clipsr [--version] <command> [args...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run 'clipsr <command> --help' for a command's options; -v/--verbose shows every",
        "library's logs and the traceback of an error.",
    ]
    return "\n".join(lines)


def version() -> str:
    from clipsr import __version__

    return f"clipsr {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from clipsr.config_loader import did_you_mean

        hint = did_you_mean(command, COMMANDS)
        print(
            f"clipsr: unknown command '{command}'{hint} (commands: {', '.join(COMMANDS)}; "
            "see clipsr --help)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
