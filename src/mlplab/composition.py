"""What Hydra composes from a command line, and why it could not: one line where Hydra prints a paragraph.

Hydra composes an entry point's config once (``mlplab.cli``); only when it raises does :func:`refuse_composition`
work out why: an option a group lacks (Hydra lists the options), a key the config lacks (the keys there are and the
closest one), a key only other options of its group have (which ones), a file that is not YAML (its line and
column), an override Hydra's grammar cannot read. Those answers need the config composed again, on this failure
path only. Hydra's override parser is used here alone (:func:`parsed_override`), for ``mlplab.config`` and the
Optuna search too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NoReturn

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf

from mlplab.errors import ConfigError, exit_with


def parsed_override(text: str) -> Override:
    """Hydra's reading of one override (``a.b=1,2``, ``choice(...)``, ``+key=...``): its parser is exposed to plugins
    only as ``OverridesParser``, used here alone; tests/test_config.py fails loudly if Hydra changes it."""
    return OverridesParser.create().parse_override(text)


def swept_values(override: Any) -> list[Any]:
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]


def refuse_composition(config_dir: str | Path, config_name: str, overrides: Sequence[str], error: Exception) -> NoReturn:
    """Why Hydra could not compose the command's config, on one line, then exit 1; a bug (not a Hydra or YAML error)
    is raised again. Runs only after Hydra has refused, so a command that composes pays nothing for it.

    Hydra's exceptions say what is wrong: an option missing from a group (``optimizer=adamx``; Hydra lists the
    options), a key missing from the config (``optimizer.lrr=1``), a file that is not YAML. Where Hydra's words are a
    paragraph or name no alternative, the config is composed again here to name the keys there are."""
    if isinstance(error, yaml.YAMLError):
        exit_with(ConfigError(yaml_problem(error)))
    if not isinstance(error, HydraException):
        raise error
    config_dir = Path(config_dir).resolve()
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = error.options or group_options([config_dir], group)  # logger=[a,b]: none
        exit_with(ConfigError(f"{group}={option} is not an option; choose one of {', '.join(options)}"))
    if isinstance(error, OverrideParseException):
        exit_with(ConfigError(f"{error.override} cannot be read: {first_line(error.message)} "
                              "(Hydra's override grammar: https://hydra.cc/docs/advanced/override_grammar/basic)"))
    parsed = [parsed_override(text) for text in overrides if not text.startswith("-") and "=" in text]
    for override in (o for o in parsed if o.is_sweep_override()):
        if override.key_or_group.startswith("hydra."):
            exit_with(ConfigError(f"{override.input_line} cannot be swept: {search_space_hint(override)}"))
        if f"'{override.input_line}'" in str(error):  # Hydra's "Ambiguous value": a sweep in a single run
            exit_with(ConfigError(f"{override.input_line} is a sweep: add -m (--multirun) for one job per value, or give "
                                  "one value (a list as [a,b]; a string holding commas in quotes)"))
    is_group = lambda o: "/" in o.key_or_group or (config_dir / o.key_or_group).is_dir()  # noqa: E731
    keys = [o for o in parsed if not (is_group(o) or o.is_add() or o.is_force_add() or o.is_delete())]
    if keys:
        refuse_unknown_keys(config_dir, config_name, [o for o in parsed if is_group(o)], keys)
    named = [o.input_line for o in parsed if o.input_line in str(error)]  # "Error merging override <it>"
    reason = first_line(str(error.__cause__)) if error.__cause__ else ""
    exit_with(ConfigError(f"{named[0]}: {reason}" if named and reason else
                          f"{first_line(str(error))}{': ' * bool(reason)}{reason}"))


def yaml_problem(error: yaml.YAMLError) -> str:
    """A config file that is not YAML (an edit left half done): the file and the place, where Hydra prints the
    YAML parser's traceback."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    reason = " ".join(str(getattr(error, "problem", None) or error).split())
    return f"{mark.name if mark else 'a config file'} is not valid YAML: {reason}{where}; fix or remove it"


def group_options(folders: list[Path], group: str) -> list[str]:
    """The options of config group ``group``: its files in the config folders."""
    return sorted({path.stem for folder in folders for path in (folder / group).glob("*.yaml")})


def first_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else text


def group_choices(groups: list[Any]) -> list[str]:
    """The overrides choosing ``groups``' options, as Hydra composes a sweep's shared config: without the swept
    ones (each of those groups has its default there)."""
    return [o.input_line for o in groups if not o.is_sweep_override() and o.value() is not None]


def composed_tree(config_dir: Path, config_name: str, overrides: list[str], with_hydra: bool = False) -> dict:
    """The config as stored (``???`` and ``${hydra:...}`` unresolved); raises what stops the composition. Inside a
    running app (a sweep's callback) Hydra's compose API uses the app's own config path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name, overrides, return_hydra_config=with_hydra)
    else:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides, return_hydra_config=with_hydra)
    return OmegaConf.to_container(cfg, resolve=False)


def refuse_unknown_keys(config_dir: Path, config_name: str, groups: list[Any], keys: list[Any]) -> None:
    """Compose the config the groups choose (Hydra's own settings too), then look up every key; a search-space entry
    (its keys hold dots: ``optimizer.lr``) is given another way, a key of another option of its group is named so."""
    try:
        tree = composed_tree(config_dir, config_name, group_choices(groups), with_hydra=True)
    except Exception:  # whatever stops this composition stops Hydra's too, which reports it
        return
    swept = {o.key_or_group: o for o in groups if o.is_sweep_override()}
    plain_tree = {k: v for k, v in tree.items() if k != "hydra"}
    for override in keys:
        key, group = override.key_or_group, override.key_or_group.split(".")[0]
        if not (unknown := unknown_key(tree if key.startswith("hydra.") else plain_tree, override)):
            continue
        chosen = tree["hydra"]["runtime"]["choices"].get(group)
        if key.startswith("hydra.sweeper.params."):
            unknown = f"{override.input_line}: {search_space_hint(override)}"
        elif group in swept:
            sweep = swept[group]
            unknown = option_problem(config_dir, config_name, group_choices(groups), f"{'+' * sweep.is_add()}{group}",
                                     list(sweep.sweep_string_iterator()), override, chosen) or unknown
        elif chosen and (config_dir / group).is_dir():  # chosen once: optimizer.momentum=0.9 with optimizer=adam
            others = group_choices([o for o in groups if o.key_or_group != group])
            unknown = option_problem(config_dir, config_name, others, group, group_options([config_dir], group), override,
                                     chosen, swept=False) or unknown
        exit_with(ConfigError(unknown))


def option_problem(config_dir: Path, config_name: str, choices: list[str], group: str, options: list[str],
                   override: Any, chosen: str | None = None, swept: bool = True) -> str | None:
    """A key that only some ``options`` of its ``group`` (``optimizer``, ``+experiment``) have
    (``optimizer.momentum=0.9`` with adam): which have it. A sweep (``-m optimizer=sgd,adam``) composes each job with
    its option, its shared config with the ``chosen`` default."""
    having, lacking = [], []
    for option in dict.fromkeys(o for o in options if o != chosen):
        try:
            tree = composed_tree(config_dir, config_name, [*choices, f"{group}={option}"])
        except Exception:  # the job's own composition fails: it is reported there
            continue
        (lacking if unknown_key(tree, override) else having).append(option)
    name = group.lstrip("+")
    where = f"{override.key_or_group} is a setting of {' or '.join(f'{name}={o}' for o in having)} only, not of "
    if not swept:
        return f"{where}{name}={chosen} (chosen); choose {f'{name}={having[0]}' if len(having) == 1 else 'one of those'}" if having else None
    nots = [f"{name}={','.join(lacking)}"] * bool(lacking) + [f"{name}={chosen} (the default a sweep shares)"] * bool(chosen)
    return (f"{where}{' nor of '.join(nots)}; sweep just the options that have it and set it with "
            f"++{override.input_line}") if having and nots else None


def unknown_key(tree: dict, override: Any) -> str | None:
    """Why ``override``'s key is not in ``tree``, with the closest key there, or None where it is."""
    key, node = override.key_or_group, tree
    for depth, part in enumerate(key.split(".")):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            parent = ".".join(key.split(".")[:depth])
            if isinstance(node, dict):
                known = f"{parent or 'the top level'} has {', '.join(map(str, node)) or 'no keys'}"
            elif isinstance(node, list):
                known = f"{parent} is a list of {len(node)}"
            else:
                known = f"{parent} is a single value"
            close = [k for k in get_close_matches(key, list(dotted_keys(tree)), n=3) if not key.startswith(f"{k}.")]
            close = close if node != {} else []  # an empty dict (hydra.job.env_set) takes new keys with +
            hint = (f"did you mean {close[0]}?" if close else f"give the whole list: {parent}=[...]" if isinstance(node, list)
                    else f"to add a new key: +{override.input_line}")
            return f"{key} is not a setting: {known}; {hint}"
    return None


def search_space_hint(override: Any) -> str:
    """How a search-space entry or a Hydra setting is given on the command line instead."""
    key, value = override.key_or_group, override.input_line.split("=", 1)[1].strip("\"'")
    searched = key.removeprefix("hydra.sweeper.params.")
    if searched == key:
        return "Hydra's own settings take one value"
    return (f"give the search space on the command line as {searched}={value}, or under "
            "hydra.sweeper.params in a conf/hparams_search file")


def dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield f"{prefix}{key}"
            yield from dotted_keys(child, f"{prefix}{key}.")
