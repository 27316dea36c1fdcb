"""Rebuild every result's markdown and the README's generated blocks from the JSON, measuring nothing.

Each ``<name>.json`` in the results folder names the script that wrote it and
that script's arguments; this runs the script again with ``--report-only``.
``--check`` writes nothing and lists what is stale instead (exit 1 if anything is).

    python experiments/report.py            # rewrite experiments/results/*.md and the README blocks
    python experiments/report.py --check    # is everything up to date?
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import harness


def results(folder: Path = harness.RESULTS) -> dict[str, dict]:
    """``{name: payload}`` of every ``<name>.json`` in ``folder``; each must be a harness record."""
    payloads = {}
    for path in sorted(folder.glob("*.json")):
        payloads[path.stem] = json.loads(path.read_text())
        missing = [key for key in harness.RECORD_KEYS if key not in payloads[path.stem]]
        if missing:
            raise ValueError(f"{path} was not written by the harness (no {', '.join(missing)}); see experiments/harness.py")
    return payloads


def script(payload: dict) -> ModuleType:
    """The experiment script that wrote ``payload``, imported as a module; only a script of experiments/."""
    name = payload.get("script")
    if not isinstance(name, str) or not (Path(harness.__file__).parent / f"{name}.py").is_file():
        raise ValueError(f"result names script {name!r}, which is not a script in experiments/")
    return importlib.import_module(name)


def stale(folder: Path = harness.RESULTS, readme: Path = harness.README) -> list[str]:
    """What differs from the rendering of the JSON in ``folder``: markdown files, README blocks, orphan blocks."""
    found, payloads = [], results(folder)
    blocks = harness.readme_blocks(readme.read_text())
    for name, payload in payloads.items():
        module = script(payload)
        md = folder / f"{name}.md"
        if not md.is_file() or md.read_text() != module.markdown(payload):
            found.append(f"{md} is not the rendering of {name}.json")
        shown = module.readme(payload) if hasattr(module, "readme") else None
        if name in blocks and (shown is None or blocks[name] != shown.rstrip("\n") + "\n"):
            found.append(f"README block {name} is not the rendering of {name}.json")
    found += [f"README block {name} has no {name}.json" for name in blocks if name not in payloads]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=harness.RESULTS, help="the results folder (default: experiments/results)")
    parser.add_argument("--check", action="store_true", help="write nothing; list stale files and blocks (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.out)
        print("\n".join(problems) or "every result's markdown and README block is up to date")
        return 1 if problems else 0
    for payload in results(args.out).values():
        script(payload).main([*payload["argv"], "--report-only", "--out", str(args.out)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
