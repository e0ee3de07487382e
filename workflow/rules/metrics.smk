# The metric network of the embedded suite and the real data's feature statistics.
rule train_classifier:
    output:
        checkpoint=f"{CHECKPOINTS}/digits_cnn.safetensors",
        checksum=f"{CHECKPOINTS}/digits_cnn.safetensors.sha256",
        info=f"{CHECKPOINTS}/digits_cnn.json",
        run=f"{CHECKPOINTS}/digits_cnn.run.json",  # the training time: the other outputs are the same bytes every run
    params:
        classifier=as_param(config.get("classifier")),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("train_classifier"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_classifier.log",
    script:
        "../scripts/train_classifier.py"


rule reference_stats:
    input:
        classifier=f"{CHECKPOINTS}/digits_cnn.safetensors",
    output:
        f"{RESULTS}/reference/digits_stats.npz",
    threads: config["threads"]
    resources:
        **PLAN.job_resources("reference_stats"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/reference_stats.log",
    script:
        "../scripts/reference_stats.py"


# The embedded suite's CLIP (a tiny open_clip model trained on the digits and class prompts),
# for the CLIP score of text-to-image samples; paper configs name a pretrained CLIP instead.
rule train_clip:
    output:
        checkpoint=f"{CHECKPOINTS}/clip.safetensors",
        checksum=f"{CHECKPOINTS}/clip.safetensors.sha256",
        summary=f"{CHECKPOINTS}/clip.json",
    params:
        clip=as_param(config.get("clip")),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("train_clip"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_clip.log",
    script:
        "../scripts/train_clip.py"


# A pretrained CLIP (the paper configs' ViT-g-14) found or downloaded before any sampling, and
# pinned by sha256: an offline node or a failed download stops the run at once, not after it.
rule fetch_clip:
    output:
        f"{CHECKPOINTS}/clip_weights.json",
    params:
        clip=as_param(config.get("clip")),
    threads: 1
    resources:
        **PLAN.job_resources("fetch_clip"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/fetch_clip.log",
    script:
        "../scripts/fetch_clip.py"


# Text-to-image paper configs: the prompt list (one MS-COCO val2014 caption per image, seeded,
# or a fixed list such as BK-SDM's)
# and the FID reference batch of the real images (ADM layout: Inception statistics of every
# image, a subset kept for precision/recall), scored by the ADM backend like the samples.
rule coco_prompts:
    input:
        annotations=lambda w: f"{DOWNLOADS}/{PLAN.prompts_source['file']}",
    output:
        f"{RESULTS}/prompts.json",
    params:
        prompts=as_param(PLAN.t2i_prompts),
        lock=PLAN.downloads_lock(),
        needed=PLAN.prompts_needed(),
    threads: 1
    resources:
        **PLAN.job_resources("coco_prompts"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/coco_prompts.log",
    script:
        "../scripts/coco_prompts.py"


# T-Stitch with ControlNet at paper scale: each caption's control image, made once from its own
# COCO image by the ControlNet's preprocessor (Canny, DPT depth, OpenPose) for every setting.
rule control_images:
    input:
        prompts=lambda w: PLAN.prompts,
        archive=lambda w: f"{DOWNLOADS}/{PLAN.reference_images['archive']['file']}",
    output:
        f"{RESULTS}/control/{{model}}.zip",
    wildcard_constraints:
        model=names_pattern(PLAN.control_image_models),
    params:
        spec=PLAN.control_images_spec,
    threads: config["threads"]
    resources:
        **PLAN.job_resources("control_images"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/control_images/{{model}}.log",
    script:
        "../scripts/control_images.py"


rule t2i_reference:
    input:
        unpack(PLAN.t2i_reference_inputs),
    output:
        f"{RESULTS}/reference/t2i_reference.npz",
    params:
        reference=as_param(PLAN.reference_images),
        lock=PLAN.downloads_lock(),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("t2i_reference"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/t2i_reference.log",
    script:
        "../scripts/t2i_reference.py"
