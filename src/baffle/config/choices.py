"""The valid choices of every enumerated config key, in one place.

Each tuple is the single definition: the feature modules that implement a choice (models, data, schemes,
aggregation, attacks, privacy, shaping, adapters, tasks, the ONNX client) import their tuple from here, and
config validation checks values against it. Adding a choice means adding it here and implementing it there;
``tests/config/test_config.py`` checks the two stay in step. Nothing here imports torch or any baffle module.
"""

from __future__ import annotations

# [run]
METHODS: tuple[str, ...] = ("baffle", "baffle_local", "fedsgd", "fedavg", "baffle_multistep")
#: methods whose clients upload loss-difference scalars only (K, or S x K): what DP and the attacks act on
SCALAR_METHODS: tuple[str, ...] = ("baffle", "baffle_multistep")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")  # run.device; auto = cuda if available (config.run.resolve_device)

# [data]
#: number of classes of each dataset: data.classes is checked against it without loading any data
NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10, "cifar10_jpeg": 10, "vader": 2}
DATASET_NAMES: tuple[str, ...] = tuple(NUM_CLASSES) + ("imagefolder",)  # imagefolder: classes known once loaded
TEXT_DATASETS: tuple[str, ...] = ("vader",)  # sentences as token ids + mask (baffle.data.text): the text models' input
PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shard", "domain")  # domain: the data's natural groups (vader)
TRANSFORMS: tuple[str, ...] = ("none", "invert", "rotate90", "hflip")
AUGMENTS: tuple[str, ...] = ("auto", "none")  # data.augment: auto = the paper's CIFAR augmentation on CIFAR sets

# [model]
VISION_MODEL_NAMES: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_tiny")  # pretrained EfficientNet-Lite (baffle.vision): RGB images
MODEL_NAMES: tuple[str, ...] = ("lenet", "wrn10_2", "mlp", "lenet_small", "cnn_cifar_small", "rf_cnn", "rf_white")
TEXT_MODEL_NAMES: tuple[str, ...] = ("minilm", "bert_tiny")  # BERT text classifiers (baffle.nlp): text datasets only
MODEL_ALIASES: dict[str, str] = {"wrn-10-2": "wrn10_2"}  # alternative spelling -> canonical name
ACTIVATIONS: tuple[str, ...] = ("hardswish", "relu", "gelu")
NORMS: tuple[str, ...] = ("group", "batch", "none")
ADAPTERS: tuple[str, ...] = ("none", "lora")
LORA_PATTERN = "*lora_*"  # the model.trainable glob that selects LoRA adapter parameters

# [estimator]
SCHEMES: tuple[str, ...] = ("forward", "central")
ENGINES: tuple[str, ...] = ("batched", "loop")
BASELINES: tuple[str, ...] = ("none", "mean")
SHAPINGS: tuple[str, ...] = ("none", "rank")
NOISE_KINDS: tuple[str, ...] = ("v1", "v2-gauss", "v2-rademacher")  # direction specs (baffle.protocol.noise)

# [federation]
AGGREGATORS: tuple[str, ...] = ("mean", "median", "trimmed_mean", "clipped_mean", "multi_krum", "fltrust")
ATTACKS: tuple[str, ...] = ("none", "scale_neg10", "scale_100", "noise", "sign_flip")
ONNX_PRECISIONS: tuple[str, ...] = ("float", "int8", "int8_weights")
LOCAL_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")  # baffle_local's client optimizer; sgd = FedZO's plain ZO-SGD

# [optim]
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")

# [privacy]
PRIVACY_MODES: tuple[str, ...] = ("none", "local", "central")
