"""The plan under the rules: a validated config -> every path, input and parameter the rules use.

The rule files hold only rules; what a rule reads and what it is told comes from here, so it is
importable and testable without Snakemake. Wildcard arguments are any object with the attribute
(`method`, `setting`, `table`), as Snakemake passes them.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

from .config import compute_settings, method_num_samples, method_num_shards, method_settings, method_timing
from .config import model_config, paper_file, reference_run, training_threads
from .methods import get_method
from .report.kinds import kind_of
from .report.paper import paper_short_name, paper_timing_batch
from .unet_training_config import is_latent_study
from .validation import schema_defaults

DOWNLOADS = "resources/downloads"
RESULTS = "results"
# Held by every timing job for its whole run (diffrepro.runlock): one timing job at a time per
# machine, across runs and suites. Per host: a cluster's timing jobs on separate nodes share results/.
TIMING_LOCK = f"{RESULTS}/.timing-{{host}}.lock"
DIT_SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "guided_channels")


def as_param(value: Any) -> str:
    """Canonical JSON for a params value: Snakemake reruns a job when the text of its params
    changes, and this keeps mere key order (e.g. a re-saved YAML) from counting."""
    return json.dumps(value, sort_keys=True)


def names_pattern(names) -> str:
    """A wildcard constraint matching exactly these names (none: a pattern nothing matches)."""
    return "|".join(names) if names else "(?!)"


class Plan:
    def __init__(self, config: dict):
        self.config = config
        suite = config["suite"]
        self.checkpoints = f"resources/checkpoints/{suite}"
        self.results = f"{RESULTS}/{suite}"
        self.reports = f"reports/{suite}"
        self.logs = f"logs/{suite}"
        self.settings = {m: method_settings(config, m) for m in config["methods"]}
        # The run each setting is measured against: {"method", "params"}.
        self.references = {m: {sid: reference_run(config, m, values) for sid, values in settings.items()}
                           for m, settings in self.settings.items()}
        self.tables = config["tables"]
        self.kinds = {name: kind_of(entry) for name, entry in self.tables.items()}
        self.figures = sorted({figure for kind in self.kinds.values() for figure in kind.figures})
        self.sampling_tables = [t for t, kind in self.kinds.items() if kind.stage == "sampling"]
        self.training_tables = [t for t, kind in self.kinds.items() if kind.stage == "training"]
        models = config["models"]
        self.trained_models = [n for n, m in models.items() if "train" in m]
        self.published_models = [n for n, m in models.items() if "source" in m]
        self.distilled_models = [n for n, m in models.items() if "distil" in m]
        self.hub_models = [n for n, m in models.items() if "hub" in m]
        # hub pipelines around a U-Net the workflow distils from another hub model (rule distil_hub_student)
        self.distil_hub_models = [n for n, m in models.items() if "distil_hub" in m]
        self.controlnet_models = [n for n, m in models.items() if "controlnet" in m]
        # paper-scale ControlNets steered by each caption's own COCO image (rule control_images)
        self.control_image_models = [n for n, m in models.items() if "control_images" in m]
        scoring = config["scoring"]
        self.scoring_backend = scoring["backend"]
        # MS-COCO for the text-to-image paper configs: the captions (prompts) and the real
        # images (the FID reference batch, computed by rule t2i_reference).
        self.t2i_prompts = config.get("t2i", {}).get("prompts")
        self.reference_images = scoring.get("reference_images")
        self.prompts = f"{self.results}/prompts.json" if self.t2i_prompts else None
        # the prompts' source: MS-COCO's annotations zip, or a fixed list (BK-SDM's metadata.csv)
        self.prompts_source = ((self.t2i_prompts.get("metadata_csv") or self.t2i_prompts["annotations"])
                               if self.t2i_prompts else None)
        remote_scoring = [scoring[k] for k in ("reference_batch", "inception_weights") if isinstance(scoring.get(k), dict)]
        self.remote_files = {
            **{m["source"]["file"]: m["source"] for m in models.values() if "source" in m},
            **{entry["file"]: entry for entry in remote_scoring},
            **({config["decoder"]["source"]["file"]: config["decoder"]["source"]}
               if config.get("decoder", {}).get("source") else {}),
            **({self.prompts_source["file"]: self.prompts_source} if self.prompts_source else {}),
            **({self.reference_images["archive"]["file"]: self.reference_images["archive"]}
               if self.reference_images else {}),
        }
        self.training = config.get("training", {})
        self.training_checkpoints = f"{self.checkpoints}/training"
        # The training methods some table reports, in table order (Snakemake merges a
        # --configfile into config/default.yaml key by key: training.methods may hold more).
        self.unet_training = config.get("unet_training", {})
        self.unet_training_timing = f"{self.results}/unet_training/timing.json"
        # paper scale: a hub pipeline trained on an image folder's VAE latents (unet_latent_study)
        self.unet_training_latent = is_latent_study(config)
        self.unet_training_reference = f"{self.results}/unet_training/reference.npz"
        self.unet_training_tables = [t for t, kind in self.kinds.items() if kind.stage == "unet_training"]
        self.training_table_methods = list(dict.fromkeys(m for t in self.training_tables for m in self.tables[t]["methods"]))
        self.reproducibility = config["reproducibility"]

    # -- jobs ------------------------------------------------------------------------------
    def scoring_param(self) -> str:
        """The scoring section as jobs' params, less its threads (scores do not depend on them)."""
        return as_param({k: v for k, v in self.config["scoring"].items() if k != "threads"})

    def job_resources(self, rule: str) -> dict:
        """The config's `resources.default` (its defaults are the schema's), then the rule's entry.
        profiles/slurm submits them as sbatch options; a local run only counts `gpu`
        (profiles/default allows one GPU job at a time)."""
        configured = self.config["resources"]
        return {**configured["default"], **configured.get(rule, {}),
                "cpus_per_task": lambda wildcards, threads: threads}

    def downloads_lock(self) -> str:
        return self.config["downloads"]["lock"]

    # -- models ----------------------------------------------------------------------------
    def checkpoint_path(self, model: str) -> str:
        """What a job loads a model from: its checkpoint, or for a hub model the fetch record."""
        if "hub" in self.config["models"][model]:
            return f"{self.checkpoints}/{model}.hub.json"
        return f"{self.checkpoints}/{model}.safetensors"

    def t2i_training_inputs(self, model: str) -> dict | None:
        """What in the t2i section a model's training depends on (None for a DiT)."""
        if self.config["models"][model]["arch"] != "sd_unet":
            return None
        return {key: self.config["t2i"][key] for key in ("scheduler", "text_encoder")}

    def ldm_training_inputs(self, model: str) -> dict | None:
        """The noise schedule an LDM U-Net trains on (the ldm section's; None for other models)."""
        if self.config["models"][model]["arch"] != "ldm_unet":
            return None
        return {key: self.config["ldm"][key] for key in ("linear_start", "linear_end")}

    def teacher_config(self, w) -> str:
        """A distilled student's teacher's U-Net config (its own is derived from it)."""
        return as_param(model_config(self.config, self.config["models"][w.model]["distil"]["teacher"]))

    def decoder_source(self) -> list[str]:
        """The downloaded first-stage checkpoint rule fetch_vae converts (none: a diffusers VAE)."""
        source = self.config.get("decoder", {}).get("source")
        return [f"{DOWNLOADS}/{source['file']}"] if source else []

    def controlnet_unet_config(self, w) -> str:
        """The config of the U-Net a ControlNet model is made from (rule train_controlnet)."""
        return as_param(model_config(self.config, self.config["models"][w.model]["controlnet"]["unet"]))

    def remote_files_pattern(self) -> str:
        return names_pattern([re.escape(f) for f in self.remote_files])

    def student_summary(self, model: str) -> str:
        return f"{self.checkpoints}/{model}.student.json"

    def student_directory(self, model: str) -> str:
        return f"{self.checkpoints}/{model}.student"

    def hub_spec(self, model: str) -> dict:
        """The hub spec rule fetch_hub_model resolves; a distil_hub model's U-Net is the local
        directory rule distil_hub_student writes."""
        spec = dict(self.config["models"][model]["hub"])
        if model in self.distil_hub_models:
            spec["unet"] = {"id": f"diffrepro:{model}", "path": self.student_directory(model), "subfolder": None}
        return spec

    def hub_inputs(self, w) -> list[str]:
        return [self.student_summary(w.model)] if w.model in self.distil_hub_models else []

    def used_as_pipeline(self, model: str) -> bool:
        """Whether some method builds its pipeline around this model (the large or only role), or
        the U-Net study trains in its pipeline (paper scale: VAE, text encoder, scheduler)."""
        return any(entry["models"].get("large", entry["models"].get("model")) == model
                   for entry in self.config["methods"].values()) or \
            any(m.get("distil_hub", {}).get("teacher") == model for m in self.config["models"].values()) or \
            (self.unet_training_latent and self.unet_training["model"] == model)

    # -- methods and settings ----------------------------------------------------------------
    def family(self, method: str) -> str:
        return get_method(method).family

    def reference_id(self, method: str, setting: str) -> tuple[str, str]:
        run = self.references[method][setting]
        return run["method"], next(s for s, v in self.settings[run["method"]].items() if v == run["params"])

    def method_checkpoints(self, w) -> dict[str, str]:
        return {role: self.checkpoint_path(model) for role, model in self.config["methods"][w.method]["models"].items()}

    def pipeline_inputs(self, w) -> dict[str, str]:
        """The method's checkpoints and, for a text-to-image method with a prompt list, the prompts."""
        inputs = self.method_checkpoints(w)
        if self.family(w.method) == "pipeline" and self.prompts is not None:
            inputs["prompts"] = self.prompts
        control = self.control_images_of(w.method)
        if control is not None:
            inputs["control_images"] = control
        if self.family(w.method) == "pipeline":
            # engines.pipeline.check_text_encoder reads each trained U-Net's summary beside it
            models = self.config["methods"][w.method]["models"].values()
            inputs["train_summaries"] = [f"{self.checkpoints}/{m}.train.json" for m in dict.fromkeys(models)
                                         if "hub" not in self.config["models"][m]]
        return inputs

    def control_images_of(self, method: str) -> str | None:
        """The control images of the method's ControlNet (role controlnet), where it has them."""
        net = self.config["methods"][method]["models"].get("controlnet")
        return f"{self.results}/control/{net}.zip" if net in self.control_image_models else None

    def control_images_spec(self, w) -> str:
        return as_param({**schema_defaults("models", "*", "control_images"),
                         **self.config["models"][w.model]["control_images"]})

    def sample_inputs(self, w) -> dict[str, str]:
        """The method's checkpoints (and prompts) and, for a latent-space suite, the VAE record."""
        inputs = self.pipeline_inputs(w)
        if "decoder" in self.config:
            inputs["vae_info"] = f"{self.checkpoints}/vae.json"
        return inputs

    def model_configs(self, w) -> str:
        roles = self.config["methods"][w.method]["models"]
        return as_param({role: model_config(self.config, model) for role, model in roles.items()})

    def setting_values(self, w) -> str:
        try:
            return as_param(self.settings[w.method][w.setting])
        except KeyError:
            raise ValueError(f"{w.method}/{w.setting} is not in the config's grid; configured settings: "
                             f"{sorted(self.settings.get(w.method, {}))}") from None

    def sampling_params(self, w) -> str:
        """What changes the samples (batch size does not: noise is drawn per image), with the
        compute options: precision, TF32 and compile change the numbers. A text-to-image
        method's samples depend on the t2i section instead, an LDM method's on the ldm section."""
        compute = {k: v for k, v in compute_settings(self.config).items() if k != "device"}
        if self.family(w.method) == "pipeline":
            # a method entry's t2i overrides (its negative prompt), where it has them
            return as_param({**self.config["t2i"], **self.config["methods"][w.method].get("t2i", {}), **compute})
        if self.family(w.method) == "ldm":
            return as_param({**self.config["ldm"], **compute})
        s = self.config["sampling"]
        return as_param({**{k: s[k] for k in DIT_SAMPLING_KEYS}, **compute})

    def num_samples(self, method: str) -> int:
        return method_num_samples(self.config, method)

    def num_shards(self, method: str) -> int:
        return method_num_shards(self.config, method)

    def shards_of(self, method: str, setting: str) -> list[str]:
        return [f"{self.results}/samples/{method}/{setting}/shard-{k}.npz" for k in range(self.num_shards(method))]

    # -- scoring -----------------------------------------------------------------------------
    def inception_weights_input(self) -> str | None:
        """The ADM backend's Inception weights (a download or a local path); None: the default."""
        weights = self.config["scoring"].get("inception_weights")
        if weights is None:
            return None
        return f"{DOWNLOADS}/{weights['file']}" if isinstance(weights, dict) else weights

    def reference_statistics_path(self) -> str:
        """Real-data feature statistics (mu, sigma): the ADM reference batch (downloaded, or for
        text-to-image computed from the real images), or the digits'."""
        if self.reference_images is not None:
            return f"{self.results}/reference/t2i_reference.npz"
        if self.scoring_backend == "adm":
            return f"{DOWNLOADS}/{self.config['scoring']['reference_batch']['file']}"
        return f"{self.results}/reference/digits_stats.npz"

    def score_inputs(self, w) -> dict:
        """The setting's shards and, to compare image by image, its reference run's."""
        ref_method, ref_setting = self.reference_id(w.method, w.setting)
        pipeline = self.family(w.method) == "pipeline"
        inputs = {"shards": self.shards_of(w.method, w.setting), "reference": self.reference_statistics_path()}
        if self.scoring_backend == "digits":
            inputs["classifier"] = f"{self.checkpoints}/digits_cnn.safetensors"
        if self.scoring_backend == "adm" and self.inception_weights_input() is not None:
            # a DAG input: a missing file fails before any sampling, not after it
            inputs["inception_weights"] = self.inception_weights_input()
        if pipeline and self.prompts is not None:
            inputs["prompts"] = self.prompts  # the CLIP score compares each image with its prompt
        clip = self.config.get("clip")
        if clip is not None and pipeline:
            if "train" in clip:
                inputs["clip_weights"] = f"{self.checkpoints}/clip.safetensors"  # the embedded suite's own CLIP
            elif clip.get("path"):
                inputs["clip_weights"] = clip["path"]  # a missing file stops the run before sampling
            else:
                inputs["clip_weights"] = f"{self.checkpoints}/clip_weights.json"  # rule fetch_clip
        if (ref_method, ref_setting) != (w.method, w.setting):
            inputs["reference_shards"] = self.shards_of(ref_method, ref_setting)
            # the reference run's features, for the paired bootstrap SE of the FID difference
            inputs["reference_features"] = f"{self.results}/scores/{ref_method}/{ref_setting}.features.npz"
        return inputs

    def score_clip(self, w) -> str:
        return as_param(self.config.get("clip") if self.family(w.method) == "pipeline" else None)

    def t2i_reference_inputs(self, w) -> dict:
        """The real images (and the Inception weights, the prompts) the FID reference is computed from."""
        inputs = {"images": f"{DOWNLOADS}/{self.reference_images['archive']['file']}"}
        if self.inception_weights_input() is not None:
            inputs["inception_weights"] = self.inception_weights_input()
        if self.reference_images["images"] == "prompts":
            inputs["prompts"] = self.prompts
        return inputs

    def prompts_needed(self) -> int:
        return max([self.num_samples(m) for m in self.config["methods"] if self.family(m) == "pipeline"], default=0)

    # -- timing (one job per table, round-robin over its rows) ---------------------------------
    def table_rows(self, table: str) -> list[tuple[str, str]]:
        return [(m, s) for m in self.kinds[table].methods(self.tables[table]) for s in self.settings[m]]

    def timing_settings(self, table: str) -> list[dict]:
        """The table's rows, each with the run it is measured against."""
        return [{"method": m, "params": self.settings[m][s], "baseline": self.references[m][s]}
                for m, s in self.table_rows(table)]

    def timing_methods(self, table: str) -> list[str]:
        """Every method the table's timing runs (its rows' and their reference runs')."""
        rows = self.timing_settings(table)
        return list(dict.fromkeys([e["method"] for e in rows] + [e["baseline"]["method"] for e in rows]))

    def timing_params(self, w) -> str:
        """Per method: its checkpoints (by role), model configs, sampling section and timing section."""
        methods = {}
        for method in self.timing_methods(w.table):
            m, control = SimpleNamespace(method=method), self.control_images_of(method)
            methods[method] = {"checkpoints": self.method_checkpoints(m),
                               "model_configs": json.loads(self.model_configs(m)),
                               "sampling": json.loads(self.sampling_params(m)),
                               "timing": method_timing(self.config, method),
                               **({"control_images": control} if control else {})}
        return as_param(methods)

    def timing_inputs(self, w) -> dict:
        """Every checkpoint the table's methods load (and a trained U-Net's summary), for text-to-image the prompts. (No
        VAE: timing stops at the samples, as the papers' timings of latent models do.)"""
        inputs = {"checkpoints": []}
        for method in self.timing_methods(w.table):
            for role, path in self.pipeline_inputs(SimpleNamespace(method=method)).items():
                if role == "prompts":
                    inputs["prompts"] = path
                for each in (path if isinstance(path, list) else [path]) if role != "prompts" else []:
                    if each not in inputs["checkpoints"]:
                        inputs["checkpoints"].append(each)
        return inputs

    # -- tables and figures ---------------------------------------------------------------------
    def table_outputs(self, name: str) -> list[str]:
        parts = [f"{self.reports}/{name}_{part}" for part in ("table.csv", "table.md", "claims.md", "table.html")]
        return parts + [f"{self.reports}/{name}_{figure}.{ext}" for figure in self.kinds[name].figures
                        for ext in ("png", "svg")]

    def report_category(self, w) -> str:
        """The HTML report groups results by paper (the title up to its colon, "T-Stitch")."""
        kind = self.kinds[w.table]
        return "Comparisons" if kind.paper is None else paper_short_name(paper_file(kind.name))

    def table_inputs(self, w) -> dict:
        name = w.table
        entry, kind = self.tables[name], self.kinds[name]
        methods = kind.methods(entry)
        paper = {"paper": paper_file(kind.name)} if kind.paper is not None else {}
        if kind.stage == "training":
            return {"scores": [f"{self.results}/training/scores/{m}.json" for m in methods],
                    "timing": f"{self.results}/training/timing.json", **paper}
        if kind.stage == "unet_training":
            return {"scores": [self.unet_training_scores(entry["regime"], m) for m in methods],
                    "timing": self.unet_training_timing, **paper}
        rows = self.table_rows(name)
        hub_models = {model for m in methods for model in self.config["methods"][m]["models"].values()
                      if "hub" in self.config["models"][model]}
        return {
            "scores": [f"{self.results}/scores/{m}/{s}.json" for m, s in rows],
            "timings": [f"{self.results}/timing/{name}.json"],
            "features": [f"{self.results}/scores/{m}/{s}.features.npz" for m, s in rows],
            "reference": self.reference_statistics_path(),
            **paper,
            # the BK-SDM table counts a hub U-Net's size from the config in its repository
            **{f"hub_{model}": self.checkpoint_path(model) for model in sorted(hub_models)},
        }

    def table_context(self, w) -> str:
        kind = self.kinds[w.table]
        return as_param(kind.context(self.config, self.tables[w.table]) if kind.context else {})

    def timing_batch(self, w) -> int:
        """The batch the paper's times are for (our time axis is for the same batch)."""
        entry, kind = self.tables[w.table], self.kinds[w.table]
        return paper_timing_batch(paper_file(kind.name), entry["paper"]) if kind.paper else 8

    def reproducibility_files(self) -> dict[str, dict]:
        """The tables REPRODUCIBILITY.md regenerates in this build (default all), and their files."""
        return {name: {"table": f"{self.reports}/{name}_table.md", "claims": f"{self.reports}/{name}_claims.md",
                       "scores": self.table_inputs(SimpleNamespace(table=name))["scores"]}
                for name in self.reproducibility.get("tables") or self.tables}

    # -- training-method runs (SpeeD, Immiscible and baselines) --------------------------------
    def training_snapshot(self, method, seed, iteration) -> str:
        return f"{self.training_checkpoints}/{method}/seed{seed}/iter{int(iteration):07d}.safetensors"

    def training_threads(self) -> int:
        return training_threads(self.config)

    def training_components(self, w) -> str:
        try:
            return as_param(self.training["methods"][w.method])
        except KeyError:
            raise ValueError(f"training method {w.method!r} is not under training.methods; "
                             f"configured: {sorted(self.training.get('methods', {}))}") from None

    def training_score_inputs(self, w) -> dict:
        return {
            "checkpoints": [self.training_snapshot(w.method, seed, it)
                            for seed in self.training["seeds"] for it in self.training["snapshots"]],
            "classifier": f"{self.checkpoints}/digits_cnn.safetensors",
            "reference": f"{self.results}/reference/digits_stats.npz",
        }

    def training_timing_methods(self) -> str:
        return as_param({m: self.training["methods"][m] for m in self.training_table_methods})

    def training_timing_baseline(self) -> str:
        """The method per-iteration costs are relative to: the first training table's baseline."""
        for table in self.training_tables:
            return self.tables[table]["baseline"]
        return next(iter(self.training["methods"]))

    # -- U-Net training runs (Immiscible Diffusion, SD version) ------------------------------
    def unet_training_snapshot(self, regime, method, seed, iteration) -> str:
        return (f"{self.checkpoints}/unet_training/{regime}/{method}/seed{seed}/"
                f"iter{int(iteration):07d}.safetensors")

    def unet_training_scores(self, regime, method) -> str:
        return f"{self.results}/unet_training/{regime}/scores/{method}.json"

    def unet_training_regime(self, w) -> dict:
        return self.unet_training["regimes"][w.regime]

    def unet_training_init(self, w) -> dict:
        """Fine-tuning regimes start from the trained model's checkpoint; at paper scale every
        regime needs the hub pipeline's record (scratch re-initialises its U-Net)."""
        if self.unet_training_latent:
            return self.unet_training_hub()
        init = self.unet_training_regime(w).get("init")
        return {"init": self.checkpoint_path(init)} if init else {}

    def unet_training_hub(self, w=None) -> dict:
        """Paper scale: the hub pipeline's fetch record; the embedded suite: nothing."""
        return {"hub": self.checkpoint_path(self.unet_training["model"])} if self.unet_training_latent else {}

    def unet_training_reference_inputs(self, w) -> dict:
        weights = self.inception_weights_input()
        return {"inception_weights": weights} if weights else {}

    def unet_training_t2i(self, rule: str = "score"):
        """The `t2i` param of the U-Net rules. The embedded suite's: what a run depends on in
        t2i (`rule` train), or the whole section. At paper scale the pipeline brings its
        scheduler and text encoder: the jobs depend on the image folder and compute options."""
        if not self.unet_training_latent:
            return self.t2i_training_inputs(self.unet_training["model"]) if rule == "train" else self.config["t2i"]
        return {"data": self.unet_training["data"], "compute": compute_settings(self.config)}

    def unet_training_summary(self, regime, method, seed) -> str:
        return f"{self.checkpoints}/unet_training/{regime}/{method}/seed{seed}/train.json"

    def unet_training_threads(self) -> int:
        return self.unet_training.get("threads", self.config["threads"])

    def unet_training_score_inputs(self, w) -> dict:
        """The runs' summaries (each lists its snapshot checkpoints), seed by seed."""
        summaries = [self.unet_training_summary(w.regime, w.method, seed) for seed in self.unet_training["seeds"]]
        if self.unet_training_latent:
            return {"summaries": summaries, **self.unet_training_hub(), "reference": self.unet_training_reference,
                    **self.unet_training_reference_inputs(w)}
        return {"summaries": summaries,
                "classifier": f"{self.checkpoints}/digits_cnn.safetensors",
                "reference": f"{self.results}/reference/digits_stats.npz"}

    def unet_training_timing_methods(self) -> str:
        """Every method some U-Net table reports, in table order."""
        names = dict.fromkeys(m for t in self.unet_training_tables for m in self.tables[t]["methods"])
        return as_param({m: self.unet_training["methods"][m] for m in names})

    def unet_training_timing_baseline(self) -> str:
        for table in self.unet_training_tables:
            return self.tables[table]["baseline"]
        return next(iter(self.unet_training["methods"]))

    def unet_training_model_config(self) -> str:
        return as_param(model_config(self.config, self.unet_training["model"]))
