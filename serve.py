"""Draw a digit and see what the network thinks: `python serve.py ckpt_path=<checkpoint or run dir>`, then open
http://127.0.0.1:8000.

Every setting lives in conf/serve.yaml; the work is mlplab.serving.serve.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.serving:serve", config_name="serve")
