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
copy the folder and change only the ids at the top of each config --

``dataset_dir``
    where the data lives; ``datalist_file`` is an expression that prepares the data on first use and
    returns a MONAI datalist with ``training``, ``validation`` and ``test`` lists (the demo calls
    :func:`medurwkv_net.data.mni152.prepare`; the dataset bundles call their reader).
``in_channels`` / ``out_channels`` / ``class_names``
    network input channels, number of classes (background included) and their names.
``spatial_size`` / ``spatial_mode`` / ``intensity`` / ``label_mode`` / ``label_threshold``
    see :mod:`medurwkv_net.bundle.transforms`; the transform chains, the inferer
    (:func:`make_inferer`) and the postprocessing are built from these, never listed in a config.
``pretrained`` / ``freeze_epochs``
    ImageNet-pretrained VRWKV encoder (``--pretrained True``), and how many leading epochs it stays
    frozen (:class:`EncoderFreezeHandler`; paper recipe: 5 when pretrained, 0 from scratch).
``max_epochs``, ``batch_size``, ``learning_rate``, ``val_interval``
    the schedule (AdamW, polynomial LR decay, Dice + cross-entropy).

The ids every MONAI tool expects are kept: ``bundle_root``, ``ckpt_dir``, ``device``,
``network_def``, ``network``, ``train#trainer`` (``#max_epochs``), ``train#dataset#data``,
``train#handlers``, ``validate#dataset#data``, ``initialize``, ``run``, ``finalize`` in train.json;
``preprocessing``, ``postprocessing``, ``inferer``, ``evaluator`` in inference.json and evaluate.json.
MONAI Label overrides ``train#dataset#data`` / ``validate#dataset#data`` and skips ``initialize``,
so nothing essential happens there.
"""
from .distributed import handlers_for_this_rank, init_distributed
from .handlers import ClassMetricReport, CurvePlotter, EncoderFreezeHandler, OverlayWriter, ProgressBar, RunAtCompletion
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
    "RunAtCompletion",
    "SaveMaskd",
    "eval_transforms",
    "handlers_for_this_rank",
    "init_distributed",
    "inference_transforms",
    "list_images",
    "make_inferer",
    "postprocessing",
    "train_transforms",
]
