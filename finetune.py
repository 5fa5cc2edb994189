"""Fine-tune a trained MLP on new data, new labels or few labels:
`python finetune.py pretrained=logs/train/runs/<run>/checkpoints/last.ckpt data=fashion_mnist`.

Every setting lives in conf/ (start at conf/finetune.yaml); the pipeline is mlplab.finetune.finetune.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.finetune:finetune", config_name="finetune", sweep_objective=True)
