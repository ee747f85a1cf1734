"""`dermalens cache`: what the per-user cache holds, and clearing it."""
from __future__ import annotations

import math
import time

KIB = 1024


def add_subcommand(subparsers) -> None:
    from ..user_cache import KINDS

    p = subparsers.add_parser(
        "cache", help="show what the per-user cache holds (images, trunk activations, ONNX exports); --clear it",
        description="Every entry is rebuilt when a run needs it again, so clearing loses only time. "
                    "Entries a running job holds are kept and named.",
        epilog="example: dermalens cache --clear --older-than 30 --kind trunk-activations")
    p.add_argument("--clear", action="store_true", help="delete the entries shown (those no running job holds)")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="only entries not used for this many days")
    p.add_argument("--kind", action="append", choices=sorted(KINDS), help="only this kind (repeatable)")
    p.add_argument("--list", action="store_true", help="one line per entry, not per kind")
    p.set_defaults(func=run)


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < KIB or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= KIB
    raise AssertionError("unreachable")


def run(args) -> int:
    from ..config import user_cache_dir
    from ..user_cache import DAY_S, KINDS, cache_entries, clear_cache, unused_for

    if args.older_than is not None and not (args.older_than >= 0 and math.isfinite(args.older_than)):
        raise ValueError(f"--older-than must be a number of days, 0 or more, not {args.older_than:g}")
    root = user_cache_dir()
    if root.exists() and not root.is_dir():
        raise ValueError(f"the per-user cache {root} is a file, not a folder: move it, or name another folder "
                         f"in DERMALENS_CACHE")
    now = time.time()
    kinds = args.kind or list(KINDS)
    entries = [entry for entry in cache_entries(root) if entry.kind in kinds]
    if args.older_than is not None:
        entries = unused_for(entries, args.older_than, now)
    scope = f" not used for {args.older_than:g} days" if args.older_than is not None else ""
    print(f"per-user cache: {root}" + ("" if root.is_dir() else " (empty: not made yet)"))
    if args.list:
        for entry in entries:
            days = (now - entry.last_used) / DAY_S
            print(f"  {entry.kind:18s} {human_size(entry.size):>9s}  used {days:5.1f} days ago  {entry.name}"
                  + ("  (left by a stopped job)" if entry.stray else ""))
    for kind in kinds:
        of_kind = [entry for entry in entries if entry.kind == kind]
        print(f"  {kind:18s} {len(of_kind):4d} entries{scope}  {human_size(sum(e.size for e in of_kind)):>9s}")
    if not args.clear:
        if entries:
            print("every entry is rebuilt when needed: `dermalens cache --clear` deletes them "
                  "(--older-than DAYS, --kind KIND to choose)")
        return 0
    removed, in_use = clear_cache(entries, now=now)
    print(f"removed {len(removed)} entries, {human_size(sum(entry.size for entry in removed))} freed")
    for entry in in_use:
        print(f"  kept {entry.kind}/{entry.name}: a running job holds it")
    return 0
