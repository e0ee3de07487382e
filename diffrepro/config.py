"""Checks of the workflow config that a JSON schema cannot express, and grid expansion.

The schema (workflow/schemas/config.schema.yaml, applied by snakemake.utils.validate)
checks types, ranges and required keys; this module checks the parts that depend on
the code: that every method is registered, its model roles are mapped to configured
models, and every point of its grid is a valid setting.
"""

from __future__ import annotations

import itertools

from .methods import MethodSpec, get_method, load_plugins, register_aliases
from .methods import reference_run as _reference_run_of
from .models.unet_config import unet_config_problems
from .report.kinds import kind_of, load_table_kinds
from .report.paper import PAPER_DIR, load_paper_table
from .validation import ConfigError



def grid_points(grid: dict | list[dict]):
    """Every point of a grid: the cartesian product of a mapping of lists, or the union of
    the products of a list of such mappings (for settings that go together, e.g. a window
    equal to the step count)."""
    for block in (grid if isinstance(grid, list) else [grid]):
        keys = list(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            yield dict(zip(keys, combo))


def method_settings(config: dict, method: str) -> dict[str, dict]:
    """setting id -> setting values, for every point of the method's grid."""
    spec = load_plugins()[method]
    settings = {}
    for values in grid_points(config["methods"][method]["grid"]):
        setting_id = spec.setting_id(spec.make_setting(values))
        if setting_id in settings:
            raise ConfigError(f"config key methods.{method}.grid: settings {settings[setting_id]} "
                              f"and {values} both map to {setting_id!r}; remove the duplicate")
        settings[setting_id] = values
    return settings


def compute_settings(config: dict) -> dict:
    """Where and how jobs run (the schema's defaults: auto device, the paper's fp32)."""
    return dict(config["compute"])


def method_num_samples(config: dict, method: str) -> int:
    return config["methods"][method].get("num_samples", config["sampling"]["num_samples"])


def method_batch_size(config: dict, method: str) -> int:
    return config["methods"][method].get("batch_size", config["sampling"]["batch_size"])


def method_num_shards(config: dict, method: str) -> int:
    return config["methods"][method].get("num_shards", config["sampling"]["num_shards"])


def training_threads(config: dict) -> int:
    """Torch threads of a training-method job: training.threads, else the suite's."""
    return config.get("training", {}).get("threads", config["threads"])


def method_timing(config: dict, method: str) -> dict:
    return {**config["timing"], **config["methods"][method].get("timing", {})}


def model_config(config: dict, name: str, _seen: tuple = ()) -> dict:
    """A model's constructor arguments; a distilled student's (BK-SDM, Distill SD XL) come from
    its teacher's by block removal; a hub model's config is in its repository ({"hub": spec}
    stands for it)."""
    entry = config["models"][name]
    if "hub" in entry:
        return {"hub": entry["hub"]}
    if "controlnet" in entry:
        return _controlnet_config(config, name, entry["controlnet"], _seen)
    if "distil" not in entry:
        return entry["config"]
    if name in _seen:
        raise ConfigError(f"config key models.{name}.distil.teacher: the teachers form a cycle "
                          f"{' -> '.join((*_seen, name))}")
    from .models.students import student_config

    teacher = entry["distil"]["teacher"]
    if (teacher not in config["models"] or config["models"][teacher]["arch"] != "sd_unet"
            or "hub" in config["models"][teacher]):
        raise ConfigError(f"config key models.{name}.distil.teacher: {teacher!r} must be an sd_unet "
                          f"model of this config that the workflow trains (distilling a hub model is "
                          f"not supported; its released students are hub models themselves, e.g. nota-ai/bk-sdm-tiny)")
    try:
        return student_config(model_config(config, teacher, (*_seen, name)), entry["distil"]["variant"])
    except ValueError as err:
        raise ConfigError(f"config key models.{name}.distil: {err}") from err


def reference_run(config: dict, method: str, setting_values: dict) -> dict:
    """{"method", "params"} of the run a setting is measured against (methods.reference_run)."""
    return _reference_run_of(method, setting_values, config["methods"][method].get("baseline"))


def table_kind(entry: dict) -> str:
    return kind_of(entry).name


def paper_file(kind: str) -> str | None:
    """reports/paper/<file>.yaml holding the published tables of a table kind (None: it has none)."""
    paper = load_table_kinds()[kind].paper
    return None if paper is None else f"reports/paper/{paper}.yaml"


def table_methods(entry: dict) -> list[str]:
    """The methods whose settings (or, for a training table, whose training runs) a table reports."""
    return kind_of(entry).methods(entry)


DIT_SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "guided_channels")


def check_config(config: dict) -> None:
    """Raise ConfigError naming the key and the allowed values; run before any job."""
    try:
        register_aliases(config["methods"])
    except (KeyError, ValueError) as err:
        raise ConfigError(err.args[0]) from err
    registry = load_plugins()
    for method, entry in config["methods"].items():
        where = f"methods.{method}"
        if method not in registry:
            raise ConfigError(f"config key {where}: unknown method {method!r}; available methods: "
                              f"{sorted(registry)}; see `python -m diffrepro list`")
        spec = registry[method]
        _check_roles(spec, entry, config, where)
        _check_family(spec, entry, config, where)
        missing = [k for k in DIT_SAMPLING_KEYS if k not in config["sampling"]]
        if spec.family == "denoiser" and missing:
            raise ConfigError(f"config key sampling: method {method!r} samples with the suite's DiT and needs "
                              f"sampling.{', sampling.'.join(missing)} (see config/default.yaml)")
        if spec.samplers is not None and config["sampling"]["sampler"] not in spec.samplers:
            raise ConfigError(f"config key sampling.sampler: method {method!r} supports "
                              f"{list(spec.samplers)}, not {config['sampling']['sampler']!r}; "
                              f"set sampling.sampler to one of them or remove methods.{method}")
        try:
            settings = method_settings(config, method)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {where}.grid: {err}") from err
        for values in settings.values():
            _check_reference(config, method, values, where)
    _check_sizes(config)
    _check_scoring(config)
    for name in config["models"]:
        model_config(config, name)  # a student's teacher exists and has the right shape
    for method, entry in config["methods"].items():  # after the models: their own errors come first
        net = entry["models"].get("controlnet")
        if net is not None and "controlnet" in config["models"].get(net, {}):
            _check_controlnet_roles(entry, config, f"methods.{method}")
    _check_text_to_image(config)
    _check_control_images(config)
    _ldm_model_problems(config)
    if "training" in config:
        _check_training(config["training"])
    for table, entry in config["tables"].items():
        _check_table_entry(config, table, entry)
    for table in config.get("reproducibility", {}).get("tables") or []:
        if table not in config["tables"]:
            raise ConfigError(f"config key reproducibility.tables: {table!r} is not a configured table; "
                              f"configured: {sorted(config['tables'])}")


# Bounds that catch a typo (an extra zero, 10**12) before any job allocates for it. The largest
# protocol in the papers is FID-50K (ADM, DiT, T-Stitch); 20x that is still a real study.
MAX_SAMPLES = 1_000_000
# A shard's images are held in memory (uint8) until the shard is written at once.
MAX_SHARD_BYTES = 16 * 2**30
LARGEST_IMAGE_BYTES = 1024 * 1024 * 3  # SDXL's 1024 px RGB: the bound assumes the largest


def _set_at(config: dict, method: str, key: str) -> str:
    """Where a method's sample count comes from: its own entry, else the sampling section."""
    return f"methods.{method}.{key}" if key in config["methods"][method] else f"sampling.{key}"


def _check_sizes(config: dict) -> None:
    for method in config["methods"]:
        n, shards = method_num_samples(config, method), method_num_shards(config, method)
        if n > MAX_SAMPLES:
            raise ConfigError(f"config key {_set_at(config, method, 'num_samples')}: {n:,} samples for "
                              f"methods.{method} is more than the bound {MAX_SAMPLES:,} (20x the papers' "
                              f"FID-50K); a typo? write the count you mean")
        if shards > n:
            raise ConfigError(f"config key {_set_at(config, method, 'num_shards')}: {shards} shards for "
                              f"{n} samples of methods.{method} leaves shards empty; set num_shards <= {n}")
        per_shard = -(-n // shards)
        if per_shard * LARGEST_IMAGE_BYTES > MAX_SHARD_BYTES:
            needed = -(-n * LARGEST_IMAGE_BYTES // MAX_SHARD_BYTES)
            raise ConfigError(f"config key {_set_at(config, method, 'num_shards')}: {per_shard:,} images per "
                              f"shard of methods.{method} may need more than 16 GiB in one job (a shard is "
                              f"held in memory until written); set num_shards >= {needed}")
    if "training" in config and config["training"]["evaluation"]["num_samples"] > MAX_SAMPLES:
        raise ConfigError(f"config key training.evaluation.num_samples: more than the bound {MAX_SAMPLES:,} "
                          f"(20x the papers' FID-50K); a typo? write the count you mean")


def prepare_config(config: dict, *, files: list, command_line: dict) -> dict:
    """Everything done to the workflow's config before the plan: --config values typed as YAML,
    every config file read strictly (duplicate keys refused), the schema applied (defaults set),
    then the checks that need the code. Raises ConfigError with the message to show: at most 20
    lines, naming the file and line that set the key."""
    from .configfile import ConfigFileError, merged_locations, typed_command_line
    from .validation import apply_schema, format_error

    typed = typed_command_line(dict(command_line))
    _overlay(config, typed)
    try:
        locations = merged_locations(files, typed)
    except ConfigFileError as err:
        raise ConfigError(str(err)) from None
    try:
        apply_schema(config)
        check_config(config)
    except ConfigError as err:
        raise ConfigError(format_error(err, locations), err.key) from None
    return config


def _overlay(config: dict, values: dict) -> None:
    """Put the typed --config values where Snakemake merged their string forms."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _overlay(config[key], value)
        else:
            config[key] = value


def _check_scoring(config: dict) -> None:
    backend = config["scoring"]["backend"]
    from .unet_training_config import is_latent_study

    if is_latent_study(config) and backend != "adm":
        raise ConfigError("config key scoring.backend: unet_training with a hub model is scored with Inception "
                          "FID against its image folder (unet_training.data.reference): set scoring.backend: adm")
    if backend == "digits" and "classifier" not in config:
        raise ConfigError("config key classifier: the digits scoring backend needs the digits CNN's "
                          "training settings (see config/default.yaml), or set scoring.backend: adm")
    has_batch, has_images = "reference_batch" in config["scoring"], "reference_images" in config["scoring"]
    # no sampling method: nothing is scored against a reference batch (the U-Net study at paper
    # scale computes its own reference from unet_training.data)
    if backend == "adm" and not (has_batch or has_images) and config["methods"]:
        raise ConfigError("config key scoring.reference_batch: the adm scoring backend needs the "
                          "ADM reference batch {file, url} (e.g. VIRTUAL_imagenet256_labeled.npz), or "
                          "scoring.reference_images to compute one from real images (text-to-image)")
    if has_batch and has_images:
        raise ConfigError("config key scoring: set reference_batch or reference_images, not both")
    if has_images and backend != "adm":
        raise ConfigError("config key scoring.reference_images: needs scoring.backend: adm")
    if config["scoring"]["is_protocol"] != "adm" and backend != "adm":
        raise ConfigError("config key scoring.is_protocol: chooses the adm backend's Inception Score; the "
                          "digits backend has one IS (is_splits splits); remove the key or set scoring.backend: adm")
    if config["scoring"].get("is_protocol") == "torch_fidelity":
        splits = config["scoring"]["is_splits"]
        for method in config["methods"]:
            samples = method_num_samples(config, method)
            if samples < splits:
                raise ConfigError(f"config key scoring.is_splits: {splits} splits, but methods.{method} scores "
                                  f"{samples} samples; lower is_splits")
    if backend == "adm" and "training" in config:
        raise ConfigError("config key training: training-method runs are scored with the digits "
                          "backend only; remove the training section or set scoring.backend: digits")


def _check_training(training: dict) -> None:
    from .training_methods import check_components

    for name, components in training["methods"].items():
        try:
            check_components(components)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key training.methods.{name}: {err}") from err
    iterations = training["train"]["iterations"]
    snapshots = training["snapshots"]
    if max(snapshots) != iterations or sorted(snapshots) != list(snapshots):
        raise ConfigError(f"config key training.snapshots: {snapshots} must be ascending and end at "
                          f"training.train.iterations ({iterations}), the run's final weights")


def _check_training_table(config: dict, table: str, entry: dict) -> None:
    where = f"tables.{table}"
    if "training" not in config:
        raise ConfigError(f"config key {where}: a {table_kind(entry)} table needs a training section")
    for key in ("methods", "baseline"):
        if key not in entry:
            raise ConfigError(f"config key {where}: a {table_kind(entry)} table needs '{key}'")
    configured = config["training"]["methods"]
    for method in entry["methods"]:
        if method not in configured:
            raise ConfigError(f"config key {where}.methods: {method!r} is not under training.methods; "
                              f"configured: {sorted(configured)}")
    if entry["baseline"] not in entry["methods"]:
        raise ConfigError(f"config key {where}.baseline: {entry['baseline']!r} must be one of the "
                          f"table's methods {entry['methods']}")


def _check_reference(config: dict, method: str, values: dict, where: str) -> None:
    try:
        run = reference_run(config, method, values)
    except ValueError as err:
        raise ConfigError(f"config key {where}.baseline: {err}") from err
    ref = run["method"]
    if ref == method:
        if run["params"] not in method_settings(config, method).values():
            raise ConfigError(f"config key {where}.baseline: setting {values} is measured against "
                              f"{run['params']}, which is not a point of the grid; add it to "
                              f"{where}.grid")
        return
    if ref not in config["methods"]:
        raise ConfigError(f"config key {where}: setting {values} is measured against method {ref!r} "
                          f"{run['params']}; add methods.{ref} with that setting in its grid")
    if run["params"] not in method_settings(config, ref).values():
        raise ConfigError(f"config key methods.{ref}.grid: {method} setting {values} is measured "
                          f"against {ref} {run['params']}; add it to methods.{ref}.grid")
    if config["methods"][ref]["models"] != config["methods"][method]["models"]:
        raise ConfigError(f"config key {where}.models: must equal methods.{ref}.models, the run its "
                          f"settings are measured against")
    if method_num_samples(config, ref) != method_num_samples(config, method):
        raise ConfigError(f"config key {where}.num_samples: must equal methods.{ref}'s "
                          f"({method_num_samples(config, ref)}): samples are compared image by image")


def _check_table_entry(config: dict, table: str, entry: dict) -> None:
    """What every table needs (a registered kind, its methods, its published table), then what
    its kind checks."""
    kinds = load_table_kinds()
    where = f"tables.{table}"
    name = entry["kind"]
    if name not in kinds:
        raise ConfigError(f"config key {where}.kind: unknown table kind {name!r}; available kinds: "
                          f"{sorted(kinds)}; see `python -m diffrepro list`")
    kind = kinds[name]
    needed = "method" if kind.one_method else "methods"
    if needed not in entry:
        raise ConfigError(f"config key {where}: a {name} table needs '{needed}'")
    if kind.stage == "training":
        _check_training_table(config, table, entry)
    elif kind.stage == "unet_training":
        pass  # the kind's check (diffrepro.unet_training_config)
    else:
        _check_sampling_table(config, table, entry)
    if kind.paper is not None:
        if "paper" not in entry:
            raise ConfigError(f"config key {where}.paper: a {name} table prints published numbers beside ours; "
                              f"name one of the tables of reports/paper/{kind.paper}.yaml")
        try:
            load_paper_table(PAPER_DIR / f"{kind.paper}.yaml", entry["paper"])
        except KeyError as err:
            raise ConfigError(f"config key {where}.paper: {err.args[0]}") from err
    elif "paper" in entry:
        raise ConfigError(f"config key {where}.paper: a {name} table has no published numbers; remove the key")
    if kind.check is not None:
        kind.check(config, table, entry)


def _check_sampling_table(config: dict, table: str, entry: dict) -> None:
    for method in table_methods(entry):
        if method not in config["methods"]:
            raise ConfigError(f"config key tables.{table}: method {method!r} is not configured "
                              f"under methods; configured: {sorted(config['methods'])}")
        for values in method_settings(config, method).values():
            ref = reference_run(config, method, values)["method"]
            if ref not in table_methods(entry):
                raise ConfigError(f"config key tables.{table}.methods: {method} is measured against "
                                  f"{ref}; list {ref} in the table too")


# The model architecture each method family runs: the suite's DiT, a diffusers U-Net, an LDM U-Net.
FAMILY_ARCH = {"denoiser": "dit", "pipeline": "sd_unet", "ldm": "ldm_unet"}


def _controlnet_config(config: dict, name: str, controlnet: dict, seen: tuple) -> dict:
    """A ControlNet model's build config: its U-Net's config and the control embedding."""
    from .t2i.controlnet import controlnet_config  # numpy only: the workflow reads the config

    unet = controlnet["unet"]
    if (unet not in config["models"] or config["models"][unet]["arch"] != "sd_unet" or "hub" in config["models"][unet]
            or config["models"][unet].get("config", {}).get("addition_embed_type") is not None):
        raise ConfigError(f"config key models.{name}.controlnet.unet: {unet!r} must be an SD-1.x-shaped sd_unet model "
                          f"of this config that the workflow trains (the ControlNet copies its encoder)")
    return controlnet_config(controlnet, model_config(config, unet, (*seen, name)))


# A method role that takes a ControlNet rather than a U-Net (tstitch_controlnet_sd).
ROLE_ARCH = {"controlnet": "sd_controlnet"}


def _check_controlnet_roles(entry: dict, config: dict, where: str) -> None:
    """The small U-Net must take the ControlNet's residuals: the large one's down-block skeleton."""
    from .t2i.controlnet import check_residual_compatible

    models = entry["models"]
    net = models["controlnet"]
    built_from = model_config(config, net)["unet"]  # refuses a ControlNet of an unsuitable U-Net first
    if config["models"][net]["controlnet"]["unet"] != models.get("large"):
        raise ConfigError(f"config key {where}.models.controlnet: {net!r} is a ControlNet of "
                          f"{config['models'][net]['controlnet']['unet']!r}, not of the large U-Net "
                          f"{models.get('large')!r}; T-Stitch runs the large model's ControlNet")
    try:
        check_residual_compatible(built_from, model_config(config, models["small"]),
                                  f"small U-Net {models['small']!r}")
    except ValueError as err:
        raise ConfigError(f"config key {where}.models.small: {err}") from None


def _check_family(spec: MethodSpec, entry: dict, config: dict, where: str) -> None:
    if spec.family == "pipeline" and "t2i" not in config:
        raise ConfigError(f"config key t2i: method {spec.name!r} runs a text-to-image pipeline and "
                          f"needs the t2i section (scheduler, steps, guidance_scale, text_encoder)")
    if spec.family == "pipeline":
        compute = compute_settings(config)
        hub = ["hub" in config["models"][model] for model in entry["models"].values()]
        if any(hub) and not all(hub):
            raise ConfigError(f"config key {where}.models: mixes hub models with models the workflow trains; "
                              f"a pipeline's U-Nets must all come from the hub or all be trained here")
        if compute["precision"] != "fp32" and compute["device"] == "cpu":
            raise ConfigError(f"config key compute.precision: {compute['precision']} with compute.device: cpu; "
                              f"half precision on a CPU would take days. Set compute.device: cuda (or auto "
                              f"with GPU jobs) or compute.precision: fp32")
        if compute["compile"] or (compute["precision"] != "fp32" and not all(hub)):
            raise ConfigError(f"config key compute: text-to-image methods ({spec.name!r}) run without "
                              f"torch.compile, and in fp32 unless all their models are hub pipelines (loaded "
                              f"in compute.precision); set compute.precision: fp32 and compute.compile: false")
    if spec.family == "ldm":
        _check_ldm(config, where)
    for role, model in entry["models"].items():
        arch = ROLE_ARCH.get(role, FAMILY_ARCH[spec.family]) if spec.family == "pipeline" else FAMILY_ARCH[spec.family]
        if config["models"][model]["arch"] != arch:
            raise ConfigError(f"config key {where}.models.{role}: method {spec.name!r} needs a model "
                              f"with arch {arch!r}; {model!r} is {config['models'][model]['arch']!r}")


def _check_ldm(config: dict, where: str) -> None:
    """An LDM method needs the ldm section, with a step count LDM's uniform DDIM grid can take."""
    if "ldm" not in config:
        raise ConfigError(f"config key ldm: {where} samples LDM U-Nets and needs the ldm section "
                          f"(steps, eta, cfg_scale; see config/default.yaml)")
    steps = config["ldm"]["steps"]
    if 1000 % steps:
        raise ConfigError(f"config key ldm.steps: {steps} does not divide 1000; LDM's uniform DDIM grid "
                          f"(range(0, 1000, 1000 // steps)) takes 10, 20, 25, 50, 100, 200, 250, 500 or 1000 steps")


def _ldm_model_problems(config: dict) -> None:
    """Each ldm_unet config builds (channels divisible by heads and groups, ...), before any job."""
    for name, entry in config["models"].items():
        if entry["arch"] == "ldm_unet" and "config" in entry:
            from .models.ldm_unet_config import LDMUNetConfig  # no torch: the workflow reads the config

            try:
                LDMUNetConfig(**entry["config"])
            except (TypeError, ValueError) as err:
                raise ConfigError(f"config key models.{name}.config: {err}") from None


def _check_control_images(config: dict) -> None:
    """A hub ControlNet steers captions: it needs control_images, and they need each caption's
    COCO image (t2i.prompts with file names, scoring.reference_images.archive)."""
    for name, entry in config["models"].items():
        where = f"models.{name}.control_images"
        if "control_images" in entry:
            if entry["arch"] != "sd_controlnet" or "hub" not in entry:
                raise ConfigError(f"config key {where}: control images are for a hub ControlNet (arch sd_controlnet "
                                  f"with hub); {name!r} is not one (the embedded ControlNets use the digits' edge maps)")
            if "prompts" not in config.get("t2i", {}):
                raise ConfigError(f"config key {where}: made from each caption's COCO image, so t2i.prompts is "
                                  f"needed (see config/paper/tstitch_controlnet_sdxl.yaml)")
            if not (config["scoring"].get("reference_images") or {}).get("archive"):
                raise ConfigError(f"config key {where}: the captions' images come from "
                                  f"scoring.reference_images.archive (MS-COCO's val2014.zip); add it")
    for method, entry in config["methods"].items():
        net = entry["models"].get("controlnet")
        found = config["models"].get(net, {})
        if "hub" in found and "control_images" not in found:
            raise ConfigError(f"config key models.{net}.control_images: method {method!r} steers captions with "
                              f"hub ControlNet {net!r}, which has no control images; add control_images: "
                              f"{{detector: canny | dpt_depth | openpose}}")


def _check_text_to_image(config: dict) -> None:
    """Class-prompt U-Nets need the t2i section and must read its text encoder's width; the
    CLIP section must say where its weights come from."""
    from .unet_training_config import is_latent_study

    sampled = {model for m in config["methods"].values() for model in m["models"].values()}
    for name, entry in config["models"].items():
        if entry["arch"] != "sd_unet":
            continue
        if is_latent_study(config) and name == config["unet_training"]["model"] and name not in sampled:
            continue  # the U-Net study's pipeline: its prompts are unet_training.data's class names
        if "t2i" not in config:
            raise ConfigError(f"config key models.{name}: an sd_unet model needs the t2i section "
                              f"(scheduler, steps, guidance_scale, and text_encoder or prompts)")
        if "source" in entry:
            raise ConfigError(f"config key models.{name}.source: published sd_unet checkpoints are hub "
                              f"models; use models.{name}.hub: {{id: ...}}")
        t2i = config["t2i"]
        if "distil_hub" in entry:
            teacher = entry["distil_hub"]["teacher"]
            found = config["models"].get(teacher, {})
            if "hub" not in found or found.get("arch") != "sd_unet" or "distil_hub" in found:
                raise ConfigError(f"config key models.{name}.distil_hub.teacher: {teacher!r} must be a hub sd_unet "
                                  f"model of this config (models.<name>.hub), not one distilled here")
        if "hub" in entry:
            if "prompts" not in t2i:
                raise ConfigError(f"config key t2i.prompts: hub model {name!r} generates from captions; add "
                                  f"t2i.prompts (MS-COCO annotations, count), see config/paper/tstitch_sd.yaml")
            continue
        if "text_encoder" not in t2i:
            raise ConfigError(f"config key t2i.text_encoder: model {name!r} is trained here with the embedded "
                              f"suite's text encoder; add t2i.text_encoder (see config/default.yaml)")
        if "config" not in t2i["scheduler"]:
            raise ConfigError(f"config key t2i.scheduler.config: model {name!r} is trained here and its "
                              f"pipeline has no scheduler of its own to take the config from")
        prediction = t2i["scheduler"]["config"].get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ConfigError(f"config key t2i.scheduler.config.prediction_type: {prediction!r}, but model "
                              f"{name!r} is trained here to predict the noise; remove the key or set it "
                              f"to 'epsilon'")
        unet_config = model_config(config, name)
        problems = unet_config_problems(unet_config)
        if problems:
            where = f"models.{name}.distil" if "distil" in entry else f"models.{name}.config"
            raise ConfigError(f"config key {where}: not a UNet2DConditionModel config: {'; '.join(problems)}")
        width, heads = t2i["text_encoder"]["hidden_size"], t2i["text_encoder"]["heads"]
        cross = unet_config.get("cross_attention_dim", 1280)
        if cross != width:
            raise ConfigError(f"config key models.{name}.config.cross_attention_dim: {cross} must equal "
                              f"t2i.text_encoder.hidden_size ({width}), the width of the text it attends to")
        if width % heads:
            raise ConfigError(f"config key t2i.text_encoder: hidden_size {width} is not divisible by heads {heads}")
        if unet_config.get("addition_embed_type") == "text_time":
            # SDXL's added conditioning: the pooled text (the encoder's projection, hidden_size
            # wide) and 6 size/crop ids of addition_time_embed_dim each
            added = 6 * unet_config.get("addition_time_embed_dim", 0) + width
            if unet_config.get("projection_class_embeddings_input_dim") != added:
                raise ConfigError(f"config key models.{name}.config.projection_class_embeddings_input_dim: "
                                  f"{unet_config.get('projection_class_embeddings_input_dim')!r} must be "
                                  f"6 x addition_time_embed_dim + t2i.text_encoder.hidden_size = {added}")
        distil = entry.get("distil", {})
        if "snr_gamma" in distil and distil["variant"] not in ("small_sd_xl", "tiny_sd_xl"):
            raise ConfigError(f"config key models.{name}.distil.snr_gamma: Min-SNR weighting is Distill SD XL's "
                              f"option (variants small_sd_xl, tiny_sd_xl), not BK-SDM's {distil['variant']!r}")
    reference = config["scoring"].get("reference_images")
    fid_size = config.get("t2i", {}).get("fid_size")
    if reference is not None and fid_size is None:
        raise ConfigError(f"config key t2i.fid_size: samples are scored against real images resized to "
                          f"{reference['size']} px (scoring.reference_images.size); set t2i.fid_size: {reference['size']}")
    if reference is not None and reference["size"] != fid_size:
        raise ConfigError(f"config key scoring.reference_images.size: {reference['size']} px, but samples are "
                          f"scored at t2i.fid_size {fid_size} px; set both to the same size")
    count = config.get("t2i", {}).get("prompts", {}).get("count")
    for method in config["methods"]:
        needed = method_num_samples(config, method)
        if count is not None and get_method(method).family == "pipeline" and needed > count:
            raise ConfigError(f"config key t2i.prompts.count: {count} prompts, but methods.{method} samples "
                              f"{needed} images (image i is generated from prompt i); raise the count or "
                              f"lower num_samples")
    if reference is not None and reference["images"] == "prompts" and "prompts" not in config.get("t2i", {}):
        raise ConfigError("config key scoring.reference_images.images: 'prompts' needs t2i.prompts")
    clip = config.get("clip")
    if clip is not None:
        if "train" in clip and "config" not in clip:
            raise ConfigError("config key clip.train: training a CLIP needs clip.config (an open_clip "
                              "model config: embed_dim, vision_cfg, text_cfg)")
        if "config" in clip and "train" not in clip and not clip.get("path"):
            raise ConfigError("config key clip.config: a custom CLIP needs its weights: set clip.path, or "
                              "clip.train to train it on the suite's data")


def _check_roles(spec: MethodSpec, entry: dict, config: dict, where: str) -> None:
    roles = set(entry["models"])
    if roles != set(spec.roles):
        raise ConfigError(f"config key {where}.models: method {spec.name!r} needs models for roles "
                          f"{sorted(spec.roles)}, got {sorted(roles)}")
    for role, model in entry["models"].items():
        if model not in config["models"]:
            raise ConfigError(f"config key {where}.models.{role}: model {model!r} is not defined "
                              f"under models; defined: {sorted(config['models'])}")
