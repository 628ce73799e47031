"""Shared parts of the Med-URWKV MONAI bundles (``bundles/<name>/``).

Every bundle is a MONAI model-zoo style folder::

    LICENSE
    configs/metadata.json        versions, task, network_data_format (inputs.image, outputs.pred, channel_def)
    configs/train.json           single-process training (CPU or one GPU)
    configs/evaluate.json        overrides train.json: test-split metrics (per-case CSV + summary), overlays
    configs/inference.json       standalone: masks for every image of ``input_dir`` (MONAI Label reads it)
    configs/multi_gpu_train.json overrides train.json: DDP + DistributedSampler, reports on rank 0 only
    configs/logging.conf
    docs/README.md               model card;  docs/data_license.txt
    models/model.pt              written by training (plain state dict of the best validation model)

How a new dataset bundle is made (``bundles/medurwkv_mni152_tissue`` is the template):
copy the folder and change the ids at the top of each config and the transform lists --

``dataset_dir`` / ``datalist_file`` / ``prepare_data``
    where the data lives, the datalist path (a plain path: reading a config has no side effects), and the
    expression that writes the datalist (``training``, ``validation``, ``test``). ``prepare_data`` is
    idempotent; the datasets of training and evaluation read ``(@prepare_data, @datalist_file)[1]``
    (``verified_datalist``): the datalist file, after ``prepare_data`` has run, so preparation happens when
    their data is read, not when a config is read (``--prepare_data False`` for a datalist of one's own;
    the demo calls :func:`medurwkv_net.data.mni152.prepare`, the dataset bundles
    :func:`medurwkv_net.data.prepare_datalist`).
``in_channels`` / ``out_channels`` / ``class_names``
    network input channels, number of classes (background included) and their names, as literals (the
    inference config never reads the training data).
``train#deterministic_transforms`` / ``train#random_transforms``
    MONAI transforms listed in the JSON; validation reuses the first list with a ``%`` macro,
    ``train#preprocessing`` joins both. Override an entry from the command line, e.g.
    ``--train#random_transforms#0#prob 0.2``, or the whole chain with ``--train#preprocessing#transforms``.
    The photo bundles augment the 0..1 image and normalise after it: ``train#normalize_transforms``
    (ImageNet mean/std) follows ``train#random_transforms`` and is appended to validation's chain too.
``pretrained`` / ``freeze_epochs``
    ImageNet-pretrained VRWKV encoder (``--pretrained True``), and how many leading epochs it stays
    frozen (:class:`EncoderFreezeHandler`; paper recipe: 5 when pretrained, 0 from scratch). Evaluation
    and inference build the network with ``pretrained: false``: their weights come from ``models/model.pt``.
``max_epochs``, ``batch_size``, ``learning_rate``, ``val_interval``
    the schedule (AdamW, polynomial LR decay, Dice + cross-entropy).

Training scores the validation split only; ``evaluate.json`` scores the test split, with metrics in the
original image space (bundles that resize their input invert the resize of the prediction, ``Invertd``,
and compare it with the mask as stored).

The ids every MONAI tool expects are kept: ``bundle_root``, ``ckpt_dir``, ``device``,
``network_def``, ``network``, ``train#trainer`` (``#max_epochs``), ``train#dataset#data``,
``train#handlers``, ``validate#dataset#data``, ``initialize``, ``run`` in train.json;
``preprocessing``, ``postprocessing``, ``inferer``, ``evaluator`` in inference.json and evaluate.json.
MONAI Label overrides ``train#dataset#data`` / ``validate#dataset#data`` with its datastore: nothing then
names ``prepare_data``, and the bundle's own data is neither prepared nor needed.
"""

from .distributed import handlers_for_this_rank, init_distributed
from .handlers import (
    ClassMetricReport,
    CurvePlotter,
    EncoderFreezeHandler,
    OverlayWriter,
    ProgressBar,
    SubsetMetricReport,
)
from .transforms import (
    SaveMaskd,
    eval_transforms,
    inference_transforms,
    list_images,
    make_inferer,
    postprocessing,
    train_transforms,
)

__all__ = [
    "ClassMetricReport",
    "CurvePlotter",
    "EncoderFreezeHandler",
    "OverlayWriter",
    "ProgressBar",
    "SaveMaskd",
    "SubsetMetricReport",
    "eval_transforms",
    "handlers_for_this_rank",
    "init_distributed",
    "inference_transforms",
    "list_images",
    "make_inferer",
    "postprocessing",
    "train_transforms",
]
