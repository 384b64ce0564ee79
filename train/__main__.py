"""``python -m train TASK ...`` trains a model; ``python -m train campaign ...`` continues the backbone campaign.

The options are parsed (and ``--help`` answered) by :mod:`train.options` before TensorFlow is imported, so a
mistyped option or a help request answers at once; TensorFlow's start-up chatter is silenced.
"""

import os
import sys

from train.options import build_campaign_parser, build_train_parser


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv[:1] == ["campaign"]:
        from train.campaign_state import CAMPAIGN_DIR

        build_campaign_parser(CAMPAIGN_DIR, CAMPAIGN_DIR.parent.parent / "runs" / "campaign").parse_args(argv[1:])
        from train.campaign import main as campaign

        return campaign(argv[1:])
    build_train_parser().parse_args(argv)
    from train.trainer import main as train

    return train(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
