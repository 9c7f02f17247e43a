"""Host syncs of one warm `Segmenter.segment()` frame (the astronaut photo), counted by `ovs_ros.sync_audit`.

    python tools/sync_count.py tiny fcclip_tiny_random maftp_tiny_random [--device cpu]

Prints, per config, the syncs between the upload and the final copy (each site) and those of the final copy; on a
CPU the audit reports what would make the host wait on CUDA (BENCHMARKS.md, "Host syncs").
"""
from __future__ import annotations

import argparse

from skimage import data

from ovs_ros.segmenter import Segmenter
from ovs_ros.sync_audit import audit_syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rgb = data.astronaut()
    for name in args.configs:
        segmenter = Segmenter.from_config(name, {"device": args.device, "text_cache_dir": None})
        segmenter.segment(rgb)  # warm
        with audit_syncs(segmenter.device) as report:
            segmenter.segment(rgb)
        print(f"{name}: {len(report.window)} in the window, {len(report.final_copy)} in the final copy")
        for site, count in report.by_site().items():
            print(f"    {count} x {site}")


if __name__ == "__main__":
    main()
