"""`dermalens data`: validate and summarise a dataset."""
from __future__ import annotations

from pathlib import Path

from .common import add_data_options, add_set_option, check_output_file

ISSUES_SHOWN = 20


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("data", help="validate and summarise a dataset",
                              epilog="example: dermalens data --data $DERMALENS_DATA/ham10000_224 --check-images")
    add_data_options(p)
    add_set_option(p, example="data.classes=[benign,malignant]", what="a data setting, as training takes it")
    p.add_argument("--check-images", action="store_true", help="decode every image to find unreadable ones")
    p.add_argument("--restrict-to-available", action="store_true", help="HAM10000: only rows whose image exists")
    p.add_argument("--issues-csv", help="write the list of bad items here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any issue is found")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.check import check_dataset
    from ..data.validation import format_summary, write_issues_csv

    check_output_file(args.issues_csv, "--issues-csv")
    summary, issues = check_dataset(args.data, args.format, check_images=args.check_images,
                                    restrict_to_available=args.restrict_to_available, overrides=args.set)
    print(format_summary(summary))
    if issues:
        for issue in issues[:ISSUES_SHOWN]:
            print(f"  {issue.kind:17s} {issue.image_id:20s} {issue.path or ''}  {issue.detail}")
        if len(issues) > ISSUES_SHOWN:
            print(f"  ... and {len(issues) - ISSUES_SHOWN} more")
    if args.issues_csv:   # also when there are none: an earlier run's list must not stay behind as if current
        write_issues_csv(issues, Path(args.issues_csv))
        print(f"{len(issues)} issue(s) written to {args.issues_csv}")
    return 1 if issues and args.strict else 0
