"""The `lazyadam` command: a thin click layer over the library.

    lazyadam generate   write a kernel's source, header and README into a folder (lazyadam.sources)
    lazyadam ir         print each stage of the pipeline (lazyadam.stages)
    lazyadam build      compile kernels into the cache ahead of time (lazyadam.compile)
    lazyadam rules      list the update rules, their options, hyperparameters and state
    lazyadam cache      list or clear the cache (lazyadam.targets.cache)
    lazyadam info       what this machine offers (lazyadam.targets.toolchain)

Errors print one line, `Error: ...`, and exit non-zero (2 for a bad option, 1 otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from . import __version__
from .codegen.passes import PIPELINE
from .codegen.pipeline import stages
from .codegen.rule import Rule
from .codegen.rule import get as rule_named
from .codegen.rule import names as rule_names
from .codegen.spec import (DEFAULT_RULE, DTYPES, GRAD_DTYPES, HALF_DTYPES, INDEX_DTYPES,
                           PARALLEL_MIN, ROUNDINGS, STATE_DTYPES, SpecError)
from .codegen.variants import specs_from_json, variants
from .errors import CompilationError, TargetUnavailableError
from .sources import write_sources
from .targets import TARGETS
from .targets import cache as kernel_cache
from .targets import compile as compile_kernel
from .targets import toolchain

#: The stages `lazyadam ir` can print, in pipeline order (the keys of `lazyadam.stages`).
STAGES = ("spec", "lower", *(name for name, _ in PIPELINE), "header", "source")
#: `lazyadam build` shows a progress bar from this many kernels on.
PROGRESS_FROM = 4

#: The rule whose options and static hyperparameters are flags of their own (`--rule` default).
DEFAULT = rule_named(DEFAULT_RULE)
#: The spec's fields that are options of their own (`static` is made from the hyperparameters').
_FLAGS = tuple(f.name for f in dataclasses.fields(DEFAULT.spec) if f.name != "static")
#: The options that bake in a hyperparameter, by option name.
_STATICS = {f"static_{name}": name for name in DEFAULT.static_hparams}


class _Main(click.Group):
    """A group whose errors are one line, `Error: ...`, never a usage block or a traceback."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            click.echo(f"Error: {err.format_message()}{hint}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Library errors as click errors: a bad spec is a usage error, a failed build a plain one."""
    try:
        yield
    except (SpecError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    except CompilationError as err:
        where = f"; log: {err.log_path}" if err.log_path else ""
        raise click.ClickException(f"{str(err).splitlines()[0]}{where}") from None
    except (TargetUnavailableError, OSError, ImportError) as err:
        raise click.ClickException(str(err)) from None


def _spec_options(func: Callable) -> Callable:
    """The spec as options. Unset flags are None: the spec's default, or varied by `build --all`."""
    options = [
        click.option("--sparse/--dense", default=None,
                     help="Lazy sparse kernel (rows named by an index array) or dense.  "
                          "[default: sparse]"),
        *_rule_flags(DEFAULT),
        click.option("--dtype", type=click.Choice(tuple(DTYPES)),
                     help="Parameter dtype; bfloat16 and float16 compute in float32 and round "
                          "what they store.  [default: float32]"),
        click.option("--index-dtype", type=click.Choice(tuple(INDEX_DTYPES)),
                     help="Index dtype of a sparse kernel.  [default: int64]"),
        click.option("--state-dtype", type=click.Choice(STATE_DTYPES),
                     help="Dtype of the state arrays of a bfloat16 or float16 parameter.  "
                          "[default: float32]"),
        click.option("--grad-dtype", type=click.Choice(GRAD_DTYPES + HALF_DTYPES),
                     help="Gradient dtype of a bfloat16 or float16 parameter: its own, or "
                          "float32.  [default: the parameter's]"),
        click.option("--rounding", type=click.Choice(ROUNDINGS),
                     help="How writes to bfloat16 or float16 round: to nearest even, or "
                          "stochastically (hashing hp->seed, hp->step and the element).  "
                          "[default: nearest]"),
        click.option("--parallel-min", type=click.IntRange(0, 2 ** 62 - 1), metavar="N",
                     help="C kernels: steps of fewer elements run on one thread.  [default: "
                          "LAZYADAM_PARALLEL_MIN at build time, else "
                          f"{PARALLEL_MIN['dense']} dense, {PARALLEL_MIN['sparse']} sparse]"),
        *_static_flags(DEFAULT),
        click.option("--rule", "rule", default=DEFAULT.name, show_default=True, metavar="NAME",
                     help="The update rule: a registered name (see 'lazyadam rules') or "
                          f"module:attribute. The flags above are the {DEFAULT.name} rule's; "
                          "any rule's take --option and --static."),
        click.option("--option", "rule_options", multiple=True, metavar="NAME=VALUE",
                     help="An option of the rule, e.g. --option momentum=true; repeatable."),
        click.option("--static", "rule_statics", multiple=True, metavar="NAME=VALUE",
                     help="Bake a hyperparameter of the rule into the code, e.g. --static "
                          "mu=0.9; repeatable."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def _flag(rule: Rule, name: str) -> str:
    """The command-line flag of a rule's option or hyperparameter: its name, or the one the
    rule's "cli" front end gives it (Adam's decay is `--weight-decay`)."""
    return "--" + rule.frontends.get("cli", {}).get(name, name).replace("_", "-")


def _rule_flags(rule: Rule) -> list[Callable]:
    """A flag for each of `rule`'s options, and `--locking`, in the spec's field order: a bool
    option as `--name/--no-name`, another as a choice."""
    flags = []
    for name in rule.flags:
        if name == "use_locking":
            flags.append(click.option("--locking/--no-locking", "use_locking", default=None,
                                      help="Row updates take a lock, so concurrent calls are "
                                           "safe."))
            continue
        option = next(o for o in rule.options if o.name == name)
        flag = _flag(rule, name)
        if option.values == (False, True):
            flags.append(click.option(f"{flag}/--no-{flag[2:]}", name, default=None,
                                      help=option.doc[:1].upper() + option.doc[1:]))
        else:
            flags.append(click.option(flag, name, type=click.Choice(option.values),
                                      help=f"{option.doc}  [default: {option.default}]"))
    return flags


def _static_flags(rule: Rule) -> list[Callable]:
    """A flag baking in each of `rule`'s hyperparameters that may be static."""
    return [click.option(_flag(rule, name), f"static_{name}", type=float, metavar="FLOAT",
                         help=f"Bake {name} into the code (hp->{name} is then ignored).")
            for name in rule.static_hparams]


def _fields(options: dict[str, Any]) -> tuple[Rule, dict[str, Any]]:
    """The rule (`--rule`) and the fields of its spec given on the command line (popped from
    `options`), statics included.

    Raises:
        click.UsageError: an unknown rule, an option or static malformed or not the rule's.
    """
    with _errors():
        try:
            rule = rule_named(options.pop("rule"))
        except KeyError as err:
            raise click.UsageError(f"--rule: {err.args[0]}") from None
    fields = {name: value for name in _FLAGS if (value := options.pop(name)) is not None}
    static = {field: value for option, field in _STATICS.items()
              if (value := options.pop(option)) is not None}
    for text in options.pop("rule_options"):
        name, value = _pair("--option", text)
        fields[name] = _option_value(rule, name, value)
    for text in options.pop("rule_statics"):
        name, value = _pair("--static", text)
        try:
            static[name] = float(value)
        except ValueError:
            raise click.UsageError(f"--static {text}: {value!r} is not a number") from None
    if static:
        fields["static"] = static
    known = {f.name for f in dataclasses.fields(rule.spec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise click.UsageError(f"the {rule.name} rule has no option {unknown[0]!r}; its spec "
                               f"fields are {', '.join(sorted(known - {'static'}))}")
    return rule, fields


def _pair(flag: str, text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise click.UsageError(f"{flag} takes NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value.strip()


def _option_value(rule: Rule, name: str, text: str) -> Any:
    """The value of `rule`'s option `name` that `text` spells (a bool as true/false)."""
    option = next((o for o in rule.options if o.name == name), None)
    if option is None:
        raise click.UsageError(f"--option {name}: the {rule.name} rule's options are "
                               f"{', '.join(o.name for o in rule.options) or 'none'}")
    for value in option.values:
        if str(value).lower() == text.lower():
            return value
    raise click.UsageError(f"--option {name}={text}: choose from "
                           f"{', '.join(str(v).lower() for v in option.values)}")


def _spec(options: dict[str, Any]) -> Any:
    rule, fields = _fields(options)
    with _errors():
        return rule.spec(**fields).validate()


_target_option = click.option("--target", type=click.Choice(TARGETS), default="c",
                              show_default=True, help="Generate C (C99, OpenMP optional) or CUDA.")
_name_option = click.option("--name", "symbol", metavar="SYMBOL",
                            help="The function (and file) name.  [default: derived from the spec, "
                                 "e.g. lazyadam_sparse_f32_i64]")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lazyadam")
def main() -> None:
    """Generate, inspect and build LazyAdam optimizer kernels (C/OpenMP and CUDA)."""


@main.command()
@_spec_options
@_target_option
@_name_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="The folder to write into (created if missing).")
def generate(target: str, symbol: str | None, out_dir: Path, **options: Any) -> None:
    """Write a kernel's source, header and README into a folder.

    The files stand alone (no Python, no lazyadam): a C kernel needs a C99 compiler and libm, OpenMP
    optional. Same options give byte-identical files; several kernels can share a folder. Prints the
    paths written.

    \b
    Examples:
      lazyadam generate --sparse --dtype bfloat16 --out third_party/lazyadam
      lazyadam generate --rule rowwise_adagrad --static eps=1e-8 --out third_party/lazyadam
    """
    spec = _spec(options)
    with _errors():
        for path in write_sources(spec, target, out_dir, symbol):
            click.echo(path)


@main.command()
@_spec_options
@_target_option
@_name_option
@click.option("--stage", type=click.Choice(STAGES),
              help="Print only this stage.  [default: all, each under a heading]")
def ir(target: str, symbol: str | None, stage: str | None, **options: Any) -> None:
    """Print each stage of lowering a spec.

    The stages are the spec, the IR as lowered and after each pass, then the header and source.

    \b
    Example:
      lazyadam ir --dense --stage hoist_invariants
    """
    spec = _spec(options)
    with _errors():
        texts = stages(spec, target, symbol)
    if stage:
        click.echo(texts[stage].rstrip("\n"))
        return
    for n, (name, text) in enumerate(texts.items()):
        if n:
            click.echo()
        click.echo(f"==== {name} ====")
        click.echo(text.rstrip("\n"))


@main.command()
@_spec_options
@_target_option
@click.option("--all", "every", is_flag=True,
              help="Build every variant: each flag not given takes all of its values.")
@click.option("--spec-json", "spec_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file holding a spec as JSON (Spec.to_json) or a list of them; repeatable.")
def build(target: str, every: bool, spec_files: tuple[Path, ...], **options: Any) -> None:
    """Compile kernels into the cache ahead of time.

    Prints where each kernel went. Without --all or --spec-json, builds the one kernel the options
    describe.

    \b
    Examples:
      lazyadam build --sparse --locking
      lazyadam build --all --dtype float32
      lazyadam build --spec-json specs.json
    """
    rule, fields = _fields(options)
    with _errors():
        specs = [spec for path in spec_files for spec in specs_from_json(path.read_text())]
        if every:
            specs += variants(rule, **fields)
        elif not specs:
            specs = [rule.spec(**fields).validate()]
        elif fields:
            raise click.UsageError("spec options apply to --all or to one kernel; "
                                   "with --spec-json alone, give them in the JSON")
    specs = list(dict.fromkeys(specs))
    built = []
    with _errors():
        if len(specs) < PROGRESS_FROM:
            built = [(spec, compile_kernel(spec, target)) for spec in specs]
        else:
            with click.progressbar(specs, label=f"building {len(specs)} {target} kernels",
                                   item_show_func=lambda s: s.symbol() if s else None,
                                   file=sys.stderr) as bar:
                built = [(spec, compile_kernel(spec, target)) for spec in bar]
    for spec, kernel in built:
        click.echo(f"{spec.symbol()}  {kernel.path}")


@main.command()
@click.argument("names", nargs=-1, metavar="[RULE]...")
def rules(names: tuple[str, ...]) -> None:
    """List the update rules: their options, hyperparameters and state.

    Without arguments, every registered rule; a RULE may also be module:attribute.

    \b
    Example:
      lazyadam rules adam
    """
    with _errors():
        try:
            found = [rule_named(name) for name in names or rule_names()]
        except KeyError as err:
            raise click.UsageError(err.args[0]) from None
    for n, rule in enumerate(found):
        if n:
            click.echo()
        click.echo(describe(rule))


def describe(rule: Rule) -> str:
    """What `lazyadam rules` prints of one rule."""
    lines = [f"{rule.name}: {rule.doc}", f"  symbols: {rule.prefix}_<sparse|dense>_...",
             "  options:"]
    for option in rule.options:
        values = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in option.values)
        lines.append(f"    {option.name}: {values} (default {str(option.default).lower()})")
    lines += ["    use_locking: false, true (default false; every rule, as --locking)",
              "  hyperparameters:"]
    for h in rule.hparams:
        how = (f"derived: {h.derived}" if h.derived else
               "static allowed" + (f" in {h.static_domain}" if h.static_domain else "")
               if h.static else "runtime only")
        lines.append(f"    {h.name}: default {h.default:g}, in {h.domain}; {how}")
    lines.append("  state:")
    for s in rule.state:
        names = ", ".join(f"{front} {name}" for front, name in s.names.items())
        when = f", when {s.when}" if s.when else ""
        beside = (f" ({s.init_beside[1]:g} beside {s.init_beside[0]})" if s.init_beside else "")
        lines.append(f"    {s.name}: per {s.per}, dtype {s.dtype}, starts at {s.init:g}{beside}"
                     f"{when}" + (f" ({names})" if names else ""))
    return "\n".join(lines)


@main.group()
def cache() -> None:
    """List or clear the kernel cache.

    The cache is $LAZYADAM_CACHE_DIR, default ~/.cache/lazyadam.
    """


@cache.command("ls")
def cache_ls() -> None:
    """List the cache entries: key, state (ok, failed, building), owner, mode, size and built files.

    An entry the cache would refuse to use (another owner, or writable by others: see
    docs/security.md) is followed by a line "refused: <path> <reason>".
    """
    entries = kernel_cache.entries()
    click.echo(f"{kernel_cache.root()}: {len(entries)} entries")
    for entry in entries:
        try:
            files = sorted(p for p in entry.iterdir() if p.is_file())
        except PermissionError:  # another user's private entry: its refusal line says whose
            files = []
        names = {p.name for p in files}
        state = "failed" if "failed" in names else "building" if "claim" in names else "ok"
        size = sum(p.stat().st_size for p in files)
        sources = [p.name for p in files if p.suffix in (".c", ".cu", ".h")]
        built = [p.name for p in files if p.name not in ("failed", "claim", "build.log")
                 and p.name not in sources]
        info = entry.lstat()
        click.echo(f"{entry.name[:16]}  {state:8}  {kernel_cache.user(info.st_uid)}  "
                   f"{stat.filemode(info.st_mode)}  {size / 1024:6.1f} KiB  "
                   f"{' '.join(built or sources)}")
        refusal = kernel_cache.refusal(entry)
        if refusal:
            click.echo(f"    refused: {refusal}")


@cache.command("clear")
def cache_clear() -> None:
    """Remove every cache entry."""
    click.echo(f"removed {kernel_cache.clear()} entries from {kernel_cache.root()}")


@main.command()
def info() -> None:
    """Show the compilers, GPUs and cache found.

    The C compiler, OpenMP, nvcc, pycuda, the GPUs and the cache directory; a missing one reads
    "not found".
    """
    click.echo(f"lazyadam {__version__}")
    report = toolchain.report()
    width = max(map(len, report))
    for name, value in report.items():
        click.echo(f"{name + ':':{width + 1}} {value}")
