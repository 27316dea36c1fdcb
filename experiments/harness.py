"""The shared harness of the scripts in ``experiments/``: arguments, records, reports, README tables.

Every script runs from a fresh clone (``pip install -e .`` first) as::

    python experiments/<name>.py --data path/to/data [--out DIR] [--report-only] ...

Python puts the script's folder first on ``sys.path``, so ``import harness``
finds this module with no path manipulation.

A script measures, then hands a JSON-able dict to a ``Report``; its markdown
and README renderings are pure functions of that dict, so ``--report-only``
rebuilds them from the committed JSON without computing anything, and
``tests/test_experiments.py`` checks that the README shows what the JSON holds.

API (small and stable; the continual and federated experiments use it too):

- ``REPO``, ``RESULTS``, ``README``: the repository root, ``experiments/results/``, ``README.md``.
- ``parser(description, data=..., seeds=..., device=...)``: an ``ArgumentParser`` with ``--out`` and
  ``--report-only``, and on request ``--data``, ``--seeds`` and ``--device``.
  ``require_data(parser, args)`` stops with a one-line error when a measurement lacks ``--data``.
- ``Report(script, name, out, argv)``: the result pair ``<out>/<name>.json`` and ``<name>.md``.
  ``record(data)`` adds ``script``, ``argv``, ``command`` and ``machine`` to the measured dict and
  writes the JSON; ``load()`` reads it back; ``publish(markdown, readme)`` writes the markdown and,
  when ``out`` is ``RESULTS``, the README block named ``name``. All writes are atomic.
  ``run(report_only, measure, markdown, readme)`` is a script's whole flow: load or record, then publish
  ``markdown(payload)`` and ``readme(payload)``; both renderers are pure functions of the JSON.
- ``command_line(script, argv)``, ``machine_line()``: the command as typed (the folders of
  ``--data`` paths shown as ``path/to/``, as they differ between machines) and the machine (CPU model, cores, torch,
  GPU or none, UTC date and time).
- ``run_isolated(function, **kwargs)``: ``(result, peak RSS in GB)`` of a call in a fresh process;
  ``peak_rss_gb()`` the peak of the current one.
- ``accuracy(predicted, truth)``: the share of equal labels, in [0, 1].
- ``sci(x)``, ``span(values, spec)``, ``same_share(fraction)``: figures as the README prints them
  (``3.8e-9``, ``1.0–1.4``, ``100%`` or ``at least 99.95%``).
- ``progress(iterable, desc)``: a tqdm bar on stderr (silent when stderr is not a terminal).
- ``readme_blocks(text)`` and ``replace_readme_block(text, name, body)``: the README's generated
  blocks, written between ``<!-- results: NAME -->`` and ``<!-- /results -->`` lines.

A new experiment is a script of this shape; ``tests/test_experiments.py`` then checks its
``--help``, its ``--report-only`` on each committed JSON and its README block::

    import sys

    import harness

    def measure(args) -> dict: ...        # the figures, JSON-able
    def markdown(payload) -> str: ...     # the full table, from the JSON alone
    def readme(payload) -> str: ...       # optional: the README block named like the result

    def main(argv: list[str] | None = None) -> int:
        parser = harness.parser(__doc__.split("\n\n")[0], data="the dataset's location", seeds=(0,))
        args = parser.parse_args(argv)
        if not args.report_only:
            harness.require_data(parser, args)
        report = harness.Report(__file__, "my_result", args.out, argv)
        return report.run(args.report_only, lambda: measure(args), markdown, readme)

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from distillmem.files import atomic_write_bytes, output_target

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
README = REPO / "README.md"

#: Keys the harness adds to every result; a script's own data may not use them.
RECORD_KEYS = ("script", "argv", "command", "machine")

_BLOCK = re.compile(r"^<!-- results: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /results -->$", re.M | re.S)

T = TypeVar("T")


# -- arguments ---------------------------------------------------------------------------


def parser(description: str, *, data: str | None = None, seeds: Sequence[int] | None = None,
           device: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--out`` and ``--report-only``.

    ``data``: help text of ``--data`` (a path), which is added when given; ``seeds``: the default
    of ``--seeds`` (one or more ints), added when given; ``device``: add ``--device``.
    """
    p = argparse.ArgumentParser(description=description)
    if data is not None:
        p.add_argument("--data", type=Path, help=data)
    if seeds is not None:
        p.add_argument("--seeds", nargs="+", type=int, default=list(seeds), help="random seeds (default: %(default)s)")
    if device:
        p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: CPU)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json and .md results (default: experiments/results)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the .md (and, in experiments/results, the README block) from the .json, measuring nothing")
    return p


def require_data(p: argparse.ArgumentParser, args: argparse.Namespace, what: str = "the dataset") -> Path:
    """``args.data``, or exit with a usage error naming ``--data`` when a measurement needs it."""
    if args.data is None:
        p.error(f"--data is required to measure: the location of {what} (or pass --report-only)")
    if not args.data.exists():
        p.error(f"--data {args.data}: no such file or folder")
    return args.data


# -- the record of a run -------------------------------------------------------------------


def command_line(script: str | os.PathLike, argv: Sequence[str]) -> str:
    """``python experiments/<script> ARGS``, with the folders in ``--data`` values shown as ``path/to/``."""
    shown, in_data = [], False
    for arg in argv:
        if arg.startswith("-"):
            in_data = arg == "--data"
            if arg.startswith("--data="):
                arg = "--data=" + _hide_folder(arg.removeprefix("--data="))
        elif in_data:
            arg = _hide_folder(arg)
        shown.append(arg)
    return shlex.join(["python", f"experiments/{Path(script).name}", *shown])


def _hide_folder(value: str) -> str:
    """``[NAME=]path/to/<file name>`` for a value holding a path with folders; other values as they are."""
    name, sep, path = value.rpartition("=") if "=" in value.split("/")[0] else ("", "", value)
    return f"{name}{sep}path/to/{Path(path).name}" if "/" in path else value


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """CPU model, cores, torch version and threads, the GPU (or none), and the UTC date and time."""
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (f"{_cpu_model()}, {os.cpu_count()} CPU cores, torch {version('torch')} with "
            f"{torch.get_num_threads()} threads, {gpu}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


class Report:
    """The result files ``<out>/<name>.json`` and ``<out>/<name>.md`` of one script run.

    ``script`` is the script's ``__file__``; ``argv`` its arguments (``sys.argv[1:]`` when None).
    """

    def __init__(self, script: str | os.PathLike, name: str, out: Path, argv: Sequence[str] | None) -> None:
        if not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"result name {name!r} must be letters, digits, '_', '.' or '-'")
        self.script = Path(script).stem
        self.name = name
        self.out = Path(out)
        self.argv = list(argv) if argv is not None else sys.argv[1:]
        self.json_path = self.out / f"{name}.json"
        self.md_path = self.out / f"{name}.md"

    def record(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` after the command and machine lines, written to ``<name>.json``; returns it as read back."""
        clash = sorted(set(RECORD_KEYS) & set(data))
        if clash:
            raise ValueError(f"result data may not use the harness's keys {clash}")
        payload = {"script": self.script, "argv": self.argv, "command": command_line(f"{self.script}.py", self.argv),
                   "machine": machine_line(), **data}
        text = json.dumps(payload, indent=1) + "\n"
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.json_path, text.encode())
        return json.loads(text)  # as --report-only will read it (tuples become lists), so both render alike

    def load(self) -> dict[str, Any]:
        """The recorded JSON, for ``--report-only``."""
        if not self.json_path.is_file():
            raise SystemExit(f"--report-only: {self.json_path} does not exist (measure first, or check --out)")
        payload = json.loads(self.json_path.read_text())
        missing = [key for key in RECORD_KEYS if key not in payload]
        if missing:
            raise SystemExit(f"{self.json_path}: not a harness record (no {', '.join(missing)})")
        return payload

    def run(self, report_only: bool, measure: Callable[[], dict[str, Any]], markdown: Callable[[dict], str],
            readme: Callable[[dict], str | None] | None = None) -> int:
        """A script's flow: ``load()`` if ``report_only`` else ``record(measure())``, then publish; returns 0.

        Before measuring, the output files must be writable: a long run is not lost to a bad ``--out``.
        """
        if not report_only:
            self.out.mkdir(parents=True, exist_ok=True)
            output_target(self.json_path), output_target(self.md_path)
        payload = self.load() if report_only else self.record(measure())
        text = markdown(payload)
        self.publish(text, None if readme is None else readme(payload))
        if not report_only:
            print(text)
        return 0

    def publish(self, markdown: str, readme: str | None = None) -> None:
        """Write ``<name>.md``; in ``RESULTS``, also replace the README block ``name`` by ``readme``."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.md_path, markdown.encode())
        print(f"wrote {self.md_path}")
        if readme is None:
            return
        if self.out.resolve() != RESULTS.resolve():
            print(f"README not updated: its tables show {RESULTS}, not {self.out}")
            return
        text = README.read_text()
        if self.name not in readme_blocks(text):
            print(f"README has no block '<!-- results: {self.name} -->'; nothing shown there")
            return
        updated = replace_readme_block(text, self.name, readme)
        if updated != text:
            atomic_write_bytes(README, updated.encode())
        print(f"README block {self.name} {'updated' if updated != text else 'already up to date'}")


# -- the README's generated blocks -----------------------------------------------------------


def readme_blocks(text: str) -> dict[str, str]:
    """``{name: body}`` of the ``<!-- results: NAME -->`` ... ``<!-- /results -->`` blocks of ``text``."""
    blocks: dict[str, str] = {}
    for match in _BLOCK.finditer(text):
        if match["name"] in blocks:
            raise ValueError(f"README block {match['name']!r} appears twice")
        blocks[match["name"]] = match["body"]
    return blocks


def replace_readme_block(text: str, name: str, body: str) -> str:
    """``text`` with the body of block ``name`` replaced by ``body`` (a final newline is added if missing)."""
    body = body if body.endswith("\n") else body + "\n"
    found = [m for m in _BLOCK.finditer(text) if m["name"] == name]
    if len(found) != 1:
        raise ValueError(f"README has {len(found)} blocks named {name!r}, expected 1")
    start, end = found[0].span("body")
    return text[:start] + body + text[end:]


# -- measurement ---------------------------------------------------------------------------


def accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """The share of ``predicted`` labels (n,) equal to ``truth`` (n,), in [0, 1]."""
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted has shape {tuple(predicted.shape)} but truth {tuple(truth.shape)}")
    return float((predicted == truth).to(torch.float64).mean())


def sci(x: float) -> str:
    """``x`` in scientific notation with one decimal and an unpadded exponent: 3.8e-9, not 3.8e-09."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def span(values: Iterable[float], spec: str) -> str:
    """``a`` when every value prints as a under ``spec``, else ``low–high``."""
    values = list(values)
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}–{high}"


def same_share(fraction: float) -> str:
    """The least share of identical predictions: ``100%`` only when every prediction agreed."""
    return "100%" if fraction == 1 else f"at least {100 * fraction:.2f}%"


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``iterable`` with a tqdm bar on stderr; silent when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


def load_note(load_average: Sequence[float], *, sentence: bool = True) -> str:
    """How far to trust a run's wall times, from the load averages at its start and end.

    A load above the machine's cores means other jobs competed for them: the
    times are then upper bounds, and the note says so. ``sentence=False``
    gives a clause to put in parentheses.
    """
    start, end = load_average
    cores = os.cpu_count() or 1
    measured = f"load average {start:.1f} at the start and {end:.1f} at the end, {cores} cores"
    quiet = max(start, end) <= cores
    if not sentence:
        return f"a quiet machine, {measured}" if quiet else f"a machine shared with other jobs, {measured}: an upper bound"
    if quiet:
        return f"Wall times were measured on a quiet machine ({measured})."
    return f"Wall times were measured on a machine shared with other jobs ({measured}): they are upper bounds."


def peak_rss_gb() -> float:
    """VmHWM, the peak resident memory of this process image, in GB (10^9 bytes).

    Not ru_maxrss: a spawned child is forked from the parent before it execs the
    new interpreter, and Linux carries the forked image's size over in ru_maxrss.
    VmHWM belongs to the memory map that exec created, so it counts this run only.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9  # the kernel's "kB" are KiB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def _call_and_measure(job: tuple[Callable[..., Any], dict]) -> tuple[Any, float]:
    function, kwargs = job
    result = function(**kwargs)
    return result, peak_rss_gb()


def run_isolated(function: Callable[..., T], **kwargs: Any) -> tuple[T, float]:
    """``function(**kwargs)`` in a fresh spawned process: (its result, its peak RSS in GB).

    ``function`` must be importable by the child: a module-level function of the engine or of a script.
    """
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(_call_and_measure, ((function, kwargs),))
    finally:
        # close + join lets the worker exit cleanly (terminate() leaks a semaphore warning).
        pool.close()
        pool.join()
