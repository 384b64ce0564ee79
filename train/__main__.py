"""Train the age, gender or multitask (backbone) model, or continue the backbone's campaign.

    python -m train campaign --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf \\
                             --data-dir ../shared/data/lfw                  # start or continue (train/campaign.py)
    python -m train multitask --data-dir ../shared/data/utkface --schedule 64:6,96:4
    python -m train age    --data-dir ../shared/data/utkface --init campaign --freeze-blocks 2
    python -m train gender --data-dir ../shared/data/utkface --init runs/multitask/model.keras --freeze-blocks 2
    python -m train age --data-dir ... --resume          # continue an interrupted run from its last epoch

See train/trainer.py for what is saved where.
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["campaign"]:
        from train.campaign import main as campaign

        sys.exit(campaign(sys.argv[2:]))
    from train.trainer import main

    sys.exit(main())
