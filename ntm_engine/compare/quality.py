"""How ``ntm compare`` rates samples: the same metrics as ``ntm eval``, chosen by the data the
runs share.

* digits: the cached classifier's accuracy and the Frechet distance of its features to the
  test split (:func:`digits_quality`; reference: the training digits' distance), and next to
  it the raw-pixel distance below: the classifier's features saturate (good solvers score
  what real digits score), the pixels judge independently;
* everything else (colour patches, image folders, arrays, the 2-D toys): the Frechet distance
  of the raw values to the test split (:func:`~ntm_engine.training.raw_quality`, the one
  ``ntm eval`` uses; reference: ``n`` held-out real training examples, so that it carries the
  same small-sample bias as ``n`` samples), and next to it the distance to
  :data:`TRAIN_REFERENCE` training examples (:func:`train_quality`; reference: ``n`` other
  training examples).  Where the test split differs from the training data (the colour
  patches' test split is another region of the photographs: real training patches score
  about 45-50 against it) the first carries that gap as a floor and rewards whatever moves
  samples towards the test region; the second asks what the model was trained for.

None of this imports diffusers.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import metrics
from ..data import load_digits, sample_toy
from ..training import DataConfig, raw_quality, run_data, sample_labels
from ..training.sections import section_from

__all__ = ["Rating", "METRICS", "TRAIN_REFERENCE", "digits_quality", "held_out_examples",
           "rating_for", "shared_data", "train_quality"]

Quality = Callable[[Tensor], Dict[str, float]]
# the row key of each rating -> what the report says it is
METRICS = {
    "frechet_distance": "Frechet distance of the digits classifier's features to the test "
                        "split (as `ntm eval`)",
    "frechet_distance_raw": "Frechet distance of the raw values (image pixels, toy "
                            "coordinates) to the test split (as `ntm eval` rates data other "
                            "than digits)",
    "frechet_distance_train": "Frechet distance of the raw values to training examples (data "
                              "other than digits; what the model was trained to match)",
}
REFERENCE_SEED = 4321   # which held-out real examples make the reference
TRAIN_REFERENCE = 2000  # training examples the train distance compares with (fewer if fewer)


class Rating(NamedTuple):
    """``labels [n]`` (or None), ``quality(samples) -> {metric: value, ...}``, ``metric``
    (the Frechet-distance key of :data:`METRICS` the plot shows), ``reference`` (what real
    data scores on it), ``reference_note`` (which real data) and ``other_references``
    (metric -> what real data scores on the other distances ``quality`` returns)."""
    labels: Optional[Tensor]
    quality: Quality
    metric: str
    reference: float
    reference_note: str
    other_references: Mapping[str, float] = {}


def shared_data(configs: Mapping[str, Mapping[str, Any]]) -> DataConfig:
    """The data config of runs whose (flat) configs are ``configs`` (role -> config); they
    must share the dataset, the class conditioning and the model's data shape (which holds
    the image size and channels), else a ValueError names the key and each run's value."""
    for key in ("dataset", "class_conditional", "data_shape"):
        vals = {role: (list(cfg["model"]["data_shape"]) if key == "data_shape" else cfg[key])
                for role, cfg in configs.items()}
        if len({repr(v) for v in vals.values()}) > 1:
            raise ValueError(f"the runs must share {key}, got {vals}")
    return section_from(DataConfig, next(iter(configs.values())))


def digits_quality(labels: Optional[Tensor], classifier_path=None,
                   log=None) -> Tuple[Quality, float]:
    """``(quality, reference)``: the digits rating of ``ntm eval``
    (:func:`~ntm_engine.metrics.sample_quality`: the cached classifier's accuracy on
    ``labels`` and the Frechet distance of its features to the test split), and that distance
    for the training split (what real digits score)."""
    net, _ = metrics.load_or_train_classifier(classifier_path, log=log)
    x_test, _ = load_digits("test")
    x_train, _ = load_digits("train")
    with torch.no_grad():
        reference = metrics.frechet_distance_features(net.features(x_train),
                                                      net.features(x_test))
    return (lambda s: metrics.sample_quality(net, s, labels, x_test)), reference


def held_out_examples(data: DataConfig, n: int, seed: int = REFERENCE_SEED,
                      offset: int = 0) -> Tensor:
    """``n`` real examples ``[n, *shape]`` that are not in the test split: entries
    ``offset .. offset + n`` of a random (``seed``) order of the training images (fewer if
    there are fewer), or fresh toy samples (``offset`` shifts the seed)."""
    images = run_data(data)
    g = torch.Generator().manual_seed(seed + (offset if images is None else 0))
    if images is None:
        return sample_toy(data.dataset, n, generator=g)
    train = images.split("train")
    idx = torch.randperm(len(train), generator=g)[offset:offset + n]
    return torch.stack([train[int(i)][0] for i in idx])


def train_quality(data: DataConfig, n: int) -> Tuple[Quality, float]:
    """``(quality, reference)``: ``quality(s [m, *shape]) -> {"frechet_distance_train": ...}``,
    the Frechet distance between the raw values of ``s`` and of :data:`TRAIN_REFERENCE`
    training examples (:func:`held_out_examples`; at least ``n`` are left for the reference),
    and what ``n`` other training examples score on it."""
    images = run_data(data)
    total = len(images.split("train")) if images is not None else TRAIN_REFERENCE + n
    k = min(TRAIN_REFERENCE, max(total - n, 2))
    to_train = metrics.frechet_distance_to(
        held_out_examples(data, k, seed=REFERENCE_SEED + 1).flatten(1))

    def quality(s: Tensor) -> Dict[str, float]:
        return {"frechet_distance_train": to_train(s.flatten(1))}
    real = held_out_examples(data, n, seed=REFERENCE_SEED + 1, offset=k)
    return quality, quality(real)["frechet_distance_train"]


def rating_for(configs: Mapping[str, Mapping[str, Any]], n: int, *, classifier=None,
               log=None) -> Rating:
    """The :class:`Rating` of ``n`` samples of runs with these (flat) configs (role ->
    config; :func:`shared_data`): digits by the classifier and by the raw-pixel Frechet
    distance, other data by the raw-value one to the test split and to training examples
    (:func:`train_quality`); the raw reference from ``n`` held-out real examples."""
    data = shared_data(configs)
    labels = sample_labels(data, n)
    raw = raw_quality(data)
    raw_reference = raw(held_out_examples(data, n))["frechet_distance_raw"]
    raw_note = f"{n} held-out real examples (training split) against the test split"
    if data.dataset == "digits":
        digits, reference = digits_quality(labels, classifier, log=log)
        return Rating(labels, lambda s: {**digits(s), **raw(s)}, "frechet_distance", reference,
                      f"the training digits against the test split (raw pixels: {raw_note})",
                      {"frechet_distance_raw": raw_reference})
    train, train_reference = train_quality(data, n)
    return Rating(labels, lambda s: {**raw(s), **train(s)}, "frechet_distance_raw",
                  raw_reference, raw_note, {"frechet_distance_train": train_reference})
