"""Experiment trackers beyond TensorBoard: MLflow and Weights & Biases (conf/logger/mlflow.yaml, wandb.yaml, many.yaml).

Lightning's own loggers do the logging; this module names the runs and sends them what Lightning does not:

- ``mlflow_logger`` / ``wandb_logger``: Lightning's loggers named as Hydra names runs: a single run is a run of
  the experiment ``train`` (the task) named after its run dir; a sweep is one experiment (MLflow) or group (W&B)
  named after the sweep dir, with one run per job.
- ``log_figure``: a matplotlib figure to every logger that takes images (TensorBoard, MLflow, W&B).
- ``TrackerRecord`` (conf/callbacks/default.yaml): each tracker's run id into run.json (for the sweep summary);
  at the end ``metrics.json`` and ``run.json`` as artifacts and the best checkpoint's path as a tag.

Hyperparameters reach every logger from ``mlplab.inspection.HParamsSummary`` (the HParams tab's flat names);
metrics are Lightning's ``self.log`` values, which every logger receives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from mlplab.composition import parsed_override
from mlplab.run_dirs import typed_arguments
from mlplab.run_record import RUN_RECORD, note_tracker

log = logging.getLogger(__name__)


def fixed_keys(arguments: list[str]) -> set[str]:
    """Keys given one value on the command line (not swept): the same in every job of a sweep."""
    keys = set()
    for text in arguments:
        try:
            override = parsed_override(text)
        except Exception:  # not an override (-m, --flags): nothing to name
            continue
        if not override.is_sweep_override():
            keys.add(override.get_key_element())
    return keys


def run_names(task_name: str, output_dir: str | Path) -> tuple[str, str]:
    """(experiment, run) names: ``train`` and the run dir's name; in a multirun the sweep dir and
    ``<job>: <the overrides this job was given that were not typed as such>``, e.g. ``3: optimizer.lr=0.003``."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        own = [item for item in hydra_cfg.overrides.task if item.partition("=")[0] not in fixed_keys(typed_arguments())]
        return str(hydra_cfg.sweep.dir), f"{hydra_cfg.job.num}: {' '.join(own) or 'defaults'}"
    return task_name, Path(output_dir).name


def mlflow_logger(
    tracking_uri: str, task_name: str, output_dir: str, experiment_name: str | None = None,
    run_name: str | None = None, **kwargs: Any,
) -> MLFlowLogger:
    """Lightning's MLFlowLogger on ``tracking_uri``, named by ``run_names`` unless the names are given."""
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):  # relative path
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    experiment, run = run_names(task_name, output_dir)
    tags = {"run_dir": str(Path(output_dir).resolve())} | (kwargs.pop("tags", None) or {})
    location = kwargs.pop("artifact_location", None)
    if location and "://" not in location:
        location = Path(location).resolve().as_uri()
    return MLFlowLogger(experiment_name=experiment_name or experiment, run_name=run_name or run,
                        tracking_uri=tracking_uri, tags=tags, artifact_location=location, **kwargs)


def wandb_logger(task_name: str, output_dir: str, group: str | None = None, name: str | None = None,
                 **kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger, writing into the run dir (``<run dir>/wandb``), grouped and named by ``run_names``."""
    import wandb

    if wandb.run is not None:  # a sweep job that failed before finishing its run: WandbLogger would log into it
        wandb.finish(exit_code=1)
    experiment, run = run_names(task_name, output_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=output_dir, group=group or experiment, name=name or run, job_type=task_name, **kwargs)


def image_loggers(trainer: L.Trainer) -> list[Logger]:
    """The run's loggers that take figures (none under ``logger=csv``; none off rank 0)."""
    if not trainer.is_global_zero:
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger | MLFlowLogger | WandbLogger)]


def log_figure(trainer: L.Trainer, tag: str, figure: Figure) -> None:
    """``figure`` as image ``tag`` in every logger of the run that takes images (rank 0 only)."""
    for logger in image_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=False)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"figures/{tag}.png")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[figure], step=trainer.global_step)


def tracker_run(logger: Logger) -> tuple[str, dict[str, Any]] | None:
    """(tracker name, where it keeps this run) for the trackers run.json names."""
    if isinstance(logger, MLFlowLogger):
        experiment = logger.experiment.get_experiment(logger.experiment_id)
        return "mlflow", {"tracking_uri": logger.experiment.tracking_uri, "experiment": experiment.name,
                          "experiment_id": logger.experiment_id, "run_id": logger.run_id}
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        return "wandb", {"project": run.project, "group": run.group, "run_id": run.id, "dir": run.dir,
                         "offline": run.offline}
    return None


class TrackerRecord(L.Callback):
    """Each tracker's run named in run.json; at the end its metrics.json and run.json as artifacts."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                found = tracker_run(logger)
                if found:
                    note_tracker(*found, run_dir=trainer.default_root_dir)


def record_outcome(trainer: L.Trainer, output_dir: Path, metrics: dict[str, Any]) -> None:
    """After metrics.json is written: it and run.json as artifacts of each tracker's run, the best checkpoint as a tag."""
    if not trainer.is_global_zero:
        return
    files = [output_dir / "metrics.json", output_dir / RUN_RECORD]
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            for path in files:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))
            logger.experiment.set_tag(logger.run_id, "best_ckpt", str(metrics.get("best_ckpt")))
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary["best_ckpt"] = str(metrics.get("best_ckpt"))
            for path in files:
                if path.is_file():
                    run.save(str(path), base_path=str(output_dir), policy="now")
            run.finish()  # Lightning leaves it open: the next sweep job in this process would log into it
