"""Evaluate a checkpoint: `python eval.py ckpt_path=<file> [split=val] [data=<name>]`.

Every setting lives in conf/eval.yaml; the work is mlplab.evaluation.evaluate.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.evaluation:evaluate", config_name="eval")
