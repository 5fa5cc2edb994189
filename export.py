"""Export a checkpoint as a standalone model file: `python export.py ckpt_path=<file> format=torchscript|onnx`.

Every setting lives in conf/export.yaml; the work is mlplab.export.export.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.export:export", config_name="export")
