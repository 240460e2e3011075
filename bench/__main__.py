"""``python -m bench NAME [--repeats N] [--write]`` (``all`` runs every benchmark; ``--list``)."""

from __future__ import annotations

import argparse

# Looked up through the module at call time, so a patched runner (tests) is the one used.
from bench import runner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", nargs="?", help=f"benchmark name or 'all' ({', '.join(runner.available())})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (default 7)")
    parser.add_argument("--write", action="store_true",
                        help="write bench/results/*.json and docs/benchmarks.md (tracked files)")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name in runner.available():
            print(f"{name:<24} {runner.describe(name)}")
        return
    names = runner.available() if args.name == "all" else [args.name]
    for name in names:
        for r in runner.run(name, repeats=args.repeats, write=args.write):
            print(f"{r['name']:<36} ours {r['ours_s']:.4f}s  {r['peer']} {r['peer_s']:.4f}s  "
                  f"ratio {r['ratio']:.2f}  agreement {r['agreement']}")
    if not args.write:
        print("(not recorded: pass --write to update bench/results and docs/benchmarks.md)")


if __name__ == "__main__":
    main()
