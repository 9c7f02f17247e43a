"""`ovs-weights`: which weights files the model cards need, and fetching them.

    ovs-weights list                      every card: present (verified / hash unverified / MISMATCH) or missing,
                                          where its file goes
    ovs-weights download NAME|CONFIG      a card, or every card a segmenter config names (plus a classifier card's
                                          base CLIP weights, through open_clip)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

LOG = logging.getLogger("ovs_ros")


def main(argv: Optional[List[str]] = None) -> int:
    from ovs_ros.models.cards import ChecksumMismatchError
    from ovs_ros.weights import WeightsDownloadError, card_status, cards_for, download, format_list, shipped_cards

    parser = argparse.ArgumentParser(prog="ovs-weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder of the weights files (default $OVS_ROS_WEIGHTS or ~/.cache/ovs_ros/weights)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every model card and the state of its file")
    listing.add_argument("--no-hash", action="store_true", help="do not hash files (fast; states become unverified)")
    fetching = commands.add_parser("download", help="fetch a card's file, or every card of a segmenter config")
    fetching.add_argument("names", nargs="+", metavar="NAME|CONFIG")
    fetching.add_argument("--force", action="store_true", help="replace a file that is there but does not match")
    fetching.add_argument("--no-base", action="store_true", help="skip the open_clip base CLIP weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")

    if args.command == "list":
        statuses = [card_status(card, args.weights_dir, verify=not args.no_hash) for card in shipped_cards()]
        print(format_list(statuses))
        return 1 if any(s.state == "mismatch" for s in statuses) else 0

    failed = 0
    for name in args.names:
        try:
            cards = cards_for(name)
        except ValueError as exc:
            LOG.error("%s", exc)
            failed += 1
            continue
        for card in cards:
            try:
                path = download(card, args.weights_dir, force=args.force, with_base=not args.no_base)
            except (WeightsDownloadError, ChecksumMismatchError, OSError) as exc:
                LOG.error("%s: %s", card.name, exc)
                failed += 1
                continue
            except Exception as exc:  # the hub's and gdown's own errors: one line, not a traceback
                LOG.error("%s: %s: %s", card.name, exc.__class__.__name__, exc)
                failed += 1
                continue
            note = "" if card.loadable else f" (note: not loadable by this version yet: {card.not_loadable_reason})"
            print(f"{card.name}: {path}{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
