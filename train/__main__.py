"""Train the age, gender or multitask (backbone) model on UTKFace.

    python -m train multitask --data-dir ../shared/data/utkface --schedule 64:6,96:4
    python -m train age    --data-dir ../shared/data/utkface --init runs/multitask/model.keras --freeze-blocks 2
    python -m train gender --data-dir ../shared/data/utkface --init runs/multitask/model.keras --freeze-blocks 2
    python -m train age --data-dir ... --resume          # continue an interrupted run from its last epoch

See train/trainer.py for what is saved where.
"""

from train.trainer import main

if __name__ == "__main__":
    main()
