# The checkpoint step. The embedded suite trains each denoiser (seeded, resumable); a paper
# suite downloads the published checkpoints, verifies them against the lock file and converts
# them to checksummed safetensors with the official keys unchanged.
rule train_denoiser:
    output:
        checkpoint=f"{CHECKPOINTS}/{{model}}.safetensors",
        checksum=f"{CHECKPOINTS}/{{model}}.safetensors.sha256",
        summary=f"{CHECKPOINTS}/{{model}}.train.json",
    wildcard_constraints:
        model=names_pattern(PLAN.trained_models),
    params:
        model_config=lambda w: as_param(config["models"][w.model]["config"]),
        train=lambda w: as_param(config["models"][w.model]["train"]),
        # a class-prompt U-Net also depends on the text encoder and the noise schedule
        t2i=lambda w: as_param(PLAN.t2i_training_inputs(w.model)),
        # an LDM U-Net trains on the ldm section's noise schedule
        ldm=lambda w: as_param(PLAN.ldm_training_inputs(w.model)),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("train_denoiser"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_denoiser/{{model}}.log",
    script:
        "../scripts/train_denoiser.py"


# BK-SDM: a block-removed student of another model of the config, initialised from the
# teacher's weights and distilled (task + output KD + feature KD); resumable like training.
rule distil_student:
    input:
        teacher=lambda w: PLAN.checkpoint_path(config["models"][w.model]["distil"]["teacher"]),
    output:
        checkpoint=f"{CHECKPOINTS}/{{model}}.safetensors",
        checksum=f"{CHECKPOINTS}/{{model}}.safetensors.sha256",
        summary=f"{CHECKPOINTS}/{{model}}.train.json",
    wildcard_constraints:
        model=names_pattern(PLAN.distilled_models),
    params:
        teacher_config=PLAN.teacher_config,
        distil=lambda w: as_param(config["models"][w.model]["distil"]),
        t2i=lambda w: as_param(PLAN.t2i_training_inputs(w.model)),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("distil_student"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/distil_student/{{model}}.log",
    script:
        "../scripts/distil_student.py"


# T-Stitch with ControlNet: a ControlNet of a trained class-prompt U-Net (ControlNetModel.from_unet,
# zero convolutions, only the ControlNet trained, as diffusers' train_controlnet.py) on (digit, its
# edge map) pairs; seeded and resumable like training.
rule train_controlnet:
    input:
        unet=lambda w: PLAN.checkpoint_path(config["models"][w.model]["controlnet"]["unet"]),
    output:
        checkpoint=f"{CHECKPOINTS}/{{model}}.safetensors",
        checksum=f"{CHECKPOINTS}/{{model}}.safetensors.sha256",
        summary=f"{CHECKPOINTS}/{{model}}.train.json",
    wildcard_constraints:
        model=names_pattern(PLAN.controlnet_models),
    params:
        unet_config=PLAN.controlnet_unet_config,
        controlnet=lambda w: as_param(config["models"][w.model]["controlnet"]),
        t2i=lambda w: as_param(PLAN.t2i_training_inputs(config["models"][w.model]["controlnet"]["unet"])),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("train_controlnet"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_controlnet/{{model}}.log",
    script:
        "../scripts/train_controlnet.py"


# Resumable (a .part file survives a killed job), retried, verified against the committed
# lock file; with downloads off it fails at once naming the URL and where to put the file.
rule download:
    output:
        f"{DOWNLOADS}/{{file}}",
    wildcard_constraints:
        file=PLAN.remote_files_pattern(),
    params:
        url=lambda w: PLAN.remote_files[w.file]["url"],
        lock=PLAN.downloads_lock(),
        retries=config["downloads"]["retries"],
    threads: 1
    resources:
        **PLAN.job_resources("download"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/download/{{file}}.log",
    script:
        "../scripts/download.py"


rule convert_checkpoint:
    input:
        lambda w: f"{DOWNLOADS}/{config['models'][w.model]['source']['file']}",
    output:
        checkpoint=f"{CHECKPOINTS}/{{model}}.safetensors",
        checksum=f"{CHECKPOINTS}/{{model}}.safetensors.sha256",
    wildcard_constraints:
        model=names_pattern(PLAN.published_models),
    params:
        model_config=lambda w: as_param(config["models"][w.model]["config"]),
        arch=lambda w: config["models"][w.model]["arch"],
        url=lambda w: config["models"][w.model]["source"]["url"],
        lock=PLAN.downloads_lock(),
    threads: 1
    resources:
        **PLAN.job_resources("convert_checkpoint"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/convert_checkpoint/{{model}}.log",
    script:
        "../scripts/convert_checkpoint.py"


# The VAE of a latent-space suite, resolved once (cache, local path or download; an LDM's VQ
# first stage converted from its downloaded checkpoint) and pinned by its weights' sha256,
# which every sampling job verifies.
rule fetch_vae:
    input:
        source=PLAN.decoder_source(),
    output:
        f"{CHECKPOINTS}/vae.json",
    params:
        decoder=as_param(config.get("decoder")),
        lock=PLAN.downloads_lock(),
    threads: 1
    resources:
        **PLAN.job_resources("fetch_vae"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/fetch_vae.log",
    script:
        "../scripts/fetch_vae.py"


# A Hugging Face pipeline, U-Net or LoRA of a text-to-image paper config: resolved from a local
# path, the cache or (allow_downloads) the hub, and pinned by the sha256 of every weight file,
# which each sampling job verifies before it loads them.
rule fetch_hub_model:
    input:
        PLAN.hub_inputs,
    output:
        f"{CHECKPOINTS}/{{model}}.hub.json",
    wildcard_constraints:
        model=names_pattern(PLAN.hub_models),
    params:
        hub=lambda w: as_param(PLAN.hub_spec(w.model)),
        as_pipeline=lambda w: PLAN.used_as_pipeline(w.model),
    threads: 1
    resources:
        **PLAN.job_resources("fetch_hub_model"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/fetch_hub_model/{{model}}.log",
    script:
        "../scripts/fetch_hub_model.py"


# Distill SD XL at paper scale: the student of a hub teacher's U-Net, distilled on captioned
# images (diffengine's recipe), saved as a diffusers U-Net that rule fetch_hub_model then pins.
rule distil_hub_student:
    input:
        teacher=lambda w: PLAN.checkpoint_path(config["models"][w.model]["distil_hub"]["teacher"]),
    output:
        f"{CHECKPOINTS}/{{model}}.student.json",
    wildcard_constraints:
        model=names_pattern(PLAN.distil_hub_models),
    params:
        spec=lambda w: as_param(config["models"][w.model]["distil_hub"]),
        directory=lambda w: PLAN.student_directory(w.model),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("distil_hub_student"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/distil_hub_student/{{model}}.log",
    script:
        "../scripts/distil_hub_student.py"
