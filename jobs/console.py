"""How every clipsr command talks to its user: quiet by default, one-line errors, ``-v/--verbose``.

- :class:`Parser`: argparse with ``-v/--verbose`` whose usage errors are one line
  (``clipsr X: message (see clipsr X --help)``, exit 2).
- :func:`command`: the decorator of every job's ``main(argv)``: it sets up the console
  (:func:`setup`) and turns any exception into one line on stderr and a non-zero exit (2 for bad
  input, 1 for a failure), with the traceback only under ``--verbose``.
- :func:`setup`: clipsr's own INFO lines as plain text; other libraries at WARNING (MLflow's
  download bars, open_clip's and Ray's INFO, Ray Data's progress bars beside ours); each warning
  once per process, on one line. ``--verbose`` (or ``CLIPSR_VERBOSE=1``) brings them back.
- :func:`quiet_worker_logging`: the same for Ray workers whose output reaches the console
  (through :func:`jobs.ray_setup.worker_setup`, and again in Ray Train's worker loop).

Light on purpose (standard library only): ``clipsr <job> --help`` imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator

VERBOSE_ENV = "CLIPSR_VERBOSE"
# Environment of the quiet mode, for this process and the Ray workers it starts.
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar on every model download
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow sets its loggers' level when imported
    "RAY_LOGGER_LEVEL": "warning",  # the same for Ray's, in the driver and in every worker
}
# Loggers of libraries that log at INFO through their own names.
THIRD_PARTY = (
    "mlflow", "ray", "ray.data", "ray.train", "ray.tune", "alembic", "urllib3", "botocore",
    "filelock", "httpx", "timm", "huggingface_hub", "PIL", "matplotlib", "numexpr",
)  # fmt: skip
# Known warnings that say nothing to a clipsr user: errors only.
ERRORS_ONLY = ("mlflow.utils.environment",)  # "Failed to resolve installed pip version" (uv)
# Exceptions that mean bad input (exit 2) when they reach the top of a command.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)  # fmt: skip

_state = {"verbose": False}
_seen_warnings: set[tuple[str, str]] = set()


def verbose() -> bool:
    """Whether this process runs with ``--verbose`` (or ``CLIPSR_VERBOSE=1``)."""
    return _state["verbose"] or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(text).split())


def summarize(err: BaseException) -> str:
    """One line for an exception: its message, or, for one that carries a traceback in its
    message (a Ray task or actor error), the line that names what was raised there."""
    cause = err
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause  # ray.exceptions.RayTaskError(...).cause: the worker's exception
    text = str(cause)
    if "Traceback (most recent call last)" in text or text.startswith("ray::"):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else type(cause).__name__
    return one_line(text) or type(cause).__name__


def fail(prog: str, message: object, code: int = 2) -> int:
    """Print ``prog: message`` as one line on stderr; return ``code``."""
    print(f"{prog}: {one_line(message)}", file=sys.stderr, flush=True)
    return code


class Parser(argparse.ArgumentParser):
    """argparse with ``-v/--verbose`` and one-line usage errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show every library's logs, progress bars and warnings, and tracebacks",
        )

    def add_optional_config(self, config_help: str, overrides_help: str) -> None:
        """An optional CONFIG file and ``key=value`` overrides; a first argument with ``=`` is
        an override, not a file."""
        self.add_argument("config", nargs="?", help=config_help)
        self.add_argument("overrides", nargs="*", help=overrides_help)
        self._optional_config = True

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if getattr(self, "_optional_config", False) and parsed.config and "=" in parsed.config:
            parsed.overrides.insert(0, parsed.config)  # only overrides were given
            parsed.config = None
        return parsed

    def error(self, message: str):  # argparse's signature; never returns
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


class _Formatter(logging.Formatter):
    """INFO as the bare message (a stage line), warnings and errors with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and verbose():
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the quiet mode: one line, each (category, text) once."""
    key = (category.__name__, str(message))
    if key in _seen_warnings:
        return
    _seen_warnings.add(key)
    name = "" if category is UserWarning else f"{category.__name__}: "
    print(f"warning: {name}{one_line(message)}", file=file or sys.stderr, flush=True)


def setup(is_verbose: bool = False) -> Callable[[], None]:
    """Configure this process's console (see the module docstring); returns the function that
    puts everything back (a command run in-process, e.g. by a test, leaves no trace)."""
    root = logging.getLogger()
    names = ("clipsr", *THIRD_PARTY, *ERRORS_ONLY)
    saved = {
        "verbose": _state["verbose"],
        "root": root.level,
        "levels": {name: logging.getLogger(name).level for name in names},
        "showwarning": warnings.showwarning,
        "env": {key: os.environ.get(key) for key in (*QUIET_ENV, VERBOSE_ENV)},
    }
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    _state["verbose"] = is_verbose or verbose()
    if _state["verbose"]:
        os.environ[VERBOSE_ENV] = "1"  # for `python -m` children and Ray workers
        root.setLevel(logging.INFO)
        for name in (*THIRD_PARTY, *ERRORS_ONLY):
            logging.getLogger(name).setLevel(logging.NOTSET)
    else:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        root.setLevel(logging.WARNING)
        logging.getLogger("clipsr").setLevel(logging.INFO)
        quiet_third_party()
        warnings.showwarning = _show_warning

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(saved["root"])
        for name, level in saved["levels"].items():
            logging.getLogger(name).setLevel(level)
        warnings.showwarning = saved["showwarning"]
        for key, value in saved["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _state["verbose"] = saved["verbose"]
        _seen_warnings.clear()

    return restore


@contextlib.contextmanager
def without_lines(*prefixes: str) -> Iterator[None]:
    """Drop the lines a library prints itself to ``sys.stderr`` that start with one of
    ``prefixes`` (quiet mode only; every other line is passed on)."""
    if verbose():
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines(keepends=True):
            if not line.startswith(prefixes):
                sys.stderr.write(line)


def quiet_third_party() -> None:
    """Third-party loggers to WARNING (again: Ray sets its own level when it is imported)."""
    if verbose():
        return
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ERRORS_ONLY:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_data_progress(ours: bool) -> None:
    """One progress display per job: Ray Data's bars off when the job shows its own (``ours``),
    else only Ray Data's global bar (no bar per operator); all of them with ``--verbose``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    if verbose():
        ctx.enable_progress_bars = True
        return
    ctx.enable_progress_bars = not ours
    ctx.enable_operator_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    quiet_third_party()
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data configures its own
        if type(handler).__name__ == "PlainRayHandler":  # the console one, not the log file
            handler.setLevel(logging.WARNING)
            handler.addFilter(_drop_progress_notice)


def _drop_progress_notice(record: logging.LogRecord) -> bool:
    """Ray Data's warning that its bars are off: they are, on purpose (the job shows its own)."""
    return not record.getMessage().startswith("Progress bars disabled")


def quiet_worker_logging() -> None:
    """In a Ray worker whose output reaches the console (the quiet mode only): Python logging at
    WARNING except clipsr's own lines (open_clip logs INFO through the root logger; Ray Train
    sets the root logger to INFO when its workers start, so its loop calls this again), no
    MLflow bars, and no random-CLIP warning (the driver gives it once)."""
    if verbose():
        return
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("clipsr").setLevel(logging.INFO)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=r"(?s).*RANDOMLY INITIALISED")


def command(prog: str) -> Callable:
    """Decorate a job's ``main(argv) -> int``: console set-up, and every error as one line on
    stderr (exit 2 for bad input, 1 otherwise; 130 on Ctrl-C), the traceback only under
    ``--verbose``. ``argparse``'s own exits (``--help``, usage errors) pass through."""

    def decorate(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            head = args[: args.index("--")] if "--" in args else args
            restore = setup("-v" in head or "--verbose" in head)
            try:
                return main(args)
            except SystemExit:
                raise
            except KeyboardInterrupt:
                return fail(prog, "interrupted", 130)
            except USER_ERRORS as err:
                if verbose():
                    traceback.print_exc()
                return fail(prog, summarize(err), 2)
            except Exception as err:
                if verbose():
                    traceback.print_exc()
                    return fail(prog, f"{type(err).__name__}: {summarize(err)}", 1)
                return fail(
                    prog,
                    f"{type(err).__name__}: {summarize(err)} (rerun with --verbose for the "
                    "traceback)",
                    1,
                )
            finally:
                restore()

        return wrapper

    return decorate
