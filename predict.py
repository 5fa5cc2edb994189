"""Classify your own pictures: `python predict.py ckpt_path=<file> inputs=<picture, folder or pattern>`.

Every setting lives in conf/predict.yaml; the work is mlplab.prediction.predict.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.prediction:predict", config_name="predict")
