"""`gandist data shards SRC DEST_URL` (write WebDataset shards) and `gandist data verify URL` (check them)."""
from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="Prepare data: write and verify WebDataset shards.")
    sub = data.add_subparsers(dest="data_command", required=True)

    shards = sub.add_parser(
        "shards",
        help="Write tar shards + manifest.json from an image folder, 'digits' or an .npz.",
        description="Write WebDataset tar shards (image + .cls + .json per sample) and manifest.json to any fsspec "
        "URL (a folder, s3://bucket/prefix, memory://...). A rerun skips shards already complete. S3 credentials "
        "come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE).",
    )
    shards.add_argument("src", help="Image folder (class = sub-folder), an .npz with x (and y) arrays, or 'digits'.")
    shards.add_argument("dest_url", help="Destination folder URL, e.g. ./shards or s3://bucket/digits.")
    shards.add_argument("--samples-per-shard", type=int, default=1000, help="Samples per tar shard (default 1000).")
    shards.add_argument("--resolution", type=int, default=None, help="Resize (shorter side) and centre-crop to R px.")
    shards.add_argument("--format", choices=("png", "jpg"), default="png", help="Image encoding (default png).")
    shards.add_argument("--prefix", default="train", help="Shard name prefix (default 'train').")
    shards.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO, a local moto server, ...).")
    shards.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    shards.set_defaults(func=_shards)

    verify = sub.add_parser("verify", help="Check each shard under URL against manifest.json (sha256).")
    verify.add_argument("url", help="Folder URL holding manifest.json and the shards.")
    verify.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO, a local moto server, ...).")
    verify.set_defaults(func=_verify)


def _storage_options(args: argparse.Namespace) -> dict:
    return {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}


def _shards(args: argparse.Namespace) -> int:
    from gandist.data.shards import write_shards

    report = write_shards(
        args.src,
        args.dest_url,
        samples_per_shard=args.samples_per_shard,
        resolution=args.resolution,
        fmt=args.format,
        prefix=args.prefix,
        storage_options=_storage_options(args),
        progress=not args.no_progress,
    )
    print(f"wrote {report.written} shard(s), kept {report.skipped} already complete, {report.samples} samples")
    print(f"manifest: {report.manifest_url}")
    print(f"data.urls: {report.pattern}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gandist.data.shards import verify_shards

    problems = verify_shards(args.url, _storage_options(args))
    for line in problems:
        print(line)
    if problems:
        from gandist.errors import UserError

        raise UserError(f"{args.url}: {len(problems)} shard(s) disagree with manifest.json; "
                        "rerun `gandist data shards`")
    print(f"{args.url}: every shard matches manifest.json")
    return 0
