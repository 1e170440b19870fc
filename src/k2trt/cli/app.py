"""Root app: global flags, error handling, and the command modules attached to it."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from k2trt import __version__
from k2trt.cli import (
    build,
    chat,
    convert,
    demo,
    inspect,
    package,
    plan,
    release,
    serve,
    synth,
    triton,
)
from k2trt.cli import eval as evaluate
from k2trt.errors import K2Error
from k2trt.output import OUTPUT

EXIT_FINDINGS = 1
EXIT_ERROR = 2
GLOBAL_FLAGS = ("--json", "--quiet", "-q", "--debug")

app = typer.Typer(
    name="k2trt",
    help="Kimi K2 from a Hugging Face block-FP8 checkpoint to TensorRT-LLM served by Triton.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: paragraphs re-wrapped to the terminal, long values wrapped, never cut
    # off with "..." (rich's tables truncate long defaults; its prose keeps docstring breaks).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"k2trt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks on errors (or set K2TRT_DEBUG=1)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Global flags may go anywhere on the command line."""
    OUTPUT.mode = "json" if json_out else "quiet" if quiet else "human"
    OUTPUT.debug = debug or os.environ.get("K2TRT_DEBUG", "") not in ("", "0")


app.command("synth")(synth.command)
app.command("inspect")(inspect.command)
app.command("convert")(convert.convert)
app.command("slice")(convert.slice_)
app.command("verify")(convert.verify)
app.command("plan")(plan.command)
app.command("build")(build.command)
app.command("package")(package.command)
app.command("serve")(serve.command)
app.command("demo")(demo.command)
app.add_typer(chat.app, name="chat")
app.add_typer(release.app, name="release")
app.add_typer(triton.app, name="triton")
app.add_typer(evaluate.app, name="eval")


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """Let `k2trt inspect X --json` mean `k2trt --json inspect X` (flags before any `--`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS]
    return flags + rest


def _failed(message: str, code: int, json_out: bool) -> int:
    """The one error report: a line on stderr and, with --json, an object on stdout."""
    OUTPUT.error(message)
    if json_out:
        OUTPUT.error_object(message, code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit 2; tracebacks only with --debug."""
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    json_out = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    OUTPUT.wrote_json = False
    try:
        result = app(args=args, prog_name="k2trt", standalone_mode=False)
    except K2Error as exc:
        if OUTPUT.debug:
            traceback.print_exc()
        return _failed(str(exc), exc.exit_code, json_out)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        return _failed("interrupted", 130, json_out)
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None and hasattr(exc, "show"):
            exc.show()
            if json_out:
                show = getattr(exc, "format_message", None)
                OUTPUT.error_object(show() if show else str(exc), int(code))
            return int(code)
        if OUTPUT.debug:
            raise
        message = f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)"
        return _failed(message, EXIT_ERROR, json_out)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
