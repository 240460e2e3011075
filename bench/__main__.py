"""``python -m bench NAME [--repeats N]`` (``all`` runs every benchmark)."""

from __future__ import annotations

import argparse

from bench.runner import available, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", help=f"benchmark name or 'all' ({', '.join(available())})")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    names = available() if args.name == "all" else [args.name]
    for name in names:
        for r in run(name, repeats=args.repeats):
            print(f"{r['name']:<36} ours {r['ours_s']:.4f}s  {r['peer']} {r['peer_s']:.4f}s  "
                  f"ratio {r['ratio']:.2f}  agreement {r['agreement']}")


if __name__ == "__main__":
    main()
