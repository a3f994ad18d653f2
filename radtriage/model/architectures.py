"""Networks by name, built through torchxrayvision's real classes; and import of torchxrayvision's published weights.

A manifest's ``architecture`` names an entry of `ARCHITECTURES`. Each entry knows how to build the untrained
network for a number of outputs (the network returns one *logit* per label: sigmoid is applied by the scorer, so
training can use ``BCEWithLogitsLoss``) and how to run it so that Grad-CAM can see its last feature maps.

Adding an architecture (e.g. "efficientnet-lite0", planned): write a builder ``(num_outputs) -> nn.Module`` that
takes a (N, 1, H, W) input in [-1024, 1024] and returns (N, num_outputs) logits, a ``cam_forward`` that returns the
last feature maps and the logits computed from them, and register both in `ARCHITECTURES`. Until then
`build_network` answers MODEL_UNAVAILABLE with a message that says it is planned, rather than a KeyError.

torchxrayvision's published weights
-----------------------------------
``xrv.models.DenseNet(weights="densenet121-res224-all")`` looks for the file in its cache folder, *downloads it
from the internet when it is missing*, and reads it with ``torch.load(..., weights_only=False)`` because the file
is a whole pickled ``DenseNet`` object, not a state dict. That path cannot be reused as it is: unpickling a whole
object can run arbitrary code, and a missing file would start a download. `load_xrv_published_weights` instead
reads the file the site provisioned, never downloads, and never lets the file name anything outside an explicit
allow-list: torchxrayvision's DenseNet parts, plain ``torch.nn`` layers, and the handful of torch functions that
rebuild tensors. Allowed classes are rebuilt from their saved attributes; no constructor or other code runs.

* Files in PyTorch's zip format (PyTorch >= 1.6) are read with ``torch.load(..., weights_only=True)`` inside
  ``torch.serialization.safe_globals(<the allow-list>)``.
* Files in the legacy format (written before PyTorch 1.6, as torchxrayvision's 2020 releases may be) cannot be read
  that way at all: for every pickled ``nn.Module`` class the legacy format records a "module" persistent id, which
  torch's weights-only reader rejects whatever the allow-list. These are read with ``weights_only=False`` but with a
  restricted unpickler (``find_class`` answers only from the same allow-list, the "restricting globals" technique
  of the Python ``pickle`` documentation), so a global outside the list still stops the load before it is called.

The tensors are then copied into a freshly built ``xrv.models.DenseNet(weights=None)``, which checks every name and
shape. `import_xrv_published_weights` turns
such a file into a radtriage artefact (state dict + manifest with torchxrayvision's labels and operating points),
so that the service itself only ever loads artefacts.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radtriage.app.core.errors import ErrorCode, TriageError

from ._xrv import import_xrv
from .artefact import ModelManifest, sha256_hex, unpickling_failure, write_artefact
from .networks.efficientnet_lite0 import build_efficientnet_lite0
from .networks.efficientnet_lite0 import cam_forward as _efficientnet_lite0_cam_forward
from .networks.frozen_triage import BackboneMismatchError, build_frozen_triage
from .networks.frozen_triage import cam_forward as _frozen_triage_cam_forward
from .preprocessing import PREPROCESSING_VERSION

XRV_DENSENET121 = "xrv-densenet121"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
#: Frozen ImageNet EfficientNet-Lite0 + trained heads (the shipped default since issue 10; networks/frozen_triage.py).
EFFICIENTNET_LITE0_FROZEN = "efficientnet-lite0-frozen"


@dataclass(frozen=True)
class Architecture:
    """How to build one kind of network and where to look inside it for Grad-CAM."""

    name: str
    #: Builds the untrained network: input (N, 1, H, W) in [-1024, 1024], output (N, num_outputs) logits.
    build: Callable[[int], nn.Module]
    #: The forward pass split for Grad-CAM: ``(last feature maps (N, C, h, w), logits (N, num_outputs))``, where
    #: the logits are computed from those very maps (they must equal ``network(x)``; a test checks it).
    cam_forward: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _build_xrv_densenet121(num_outputs: int) -> nn.Module:
    xrv = import_xrv()
    # weights=None: never touch torchxrayvision's download path. op_threshs=None and apply_sigmoid=False: the
    # forward pass returns raw logits, whatever the attributes of a published model would have done.
    network: nn.Module = xrv.models.DenseNet(
        weights=None, num_classes=num_outputs, in_channels=1, op_threshs=None, apply_sigmoid=False
    )
    return network


def _build_frozen_triage(num_outputs: int) -> nn.Module:
    try:
        return build_frozen_triage(num_outputs)
    except (BackboneMismatchError, FileNotFoundError) as exc:
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, f"the frozen backbone cannot be loaded ({exc})") from None


def _xrv_densenet_cam_forward(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # What xrv.models.DenseNet.forward does (features2 then classifier), written out so that the feature maps are
    # a tensor of their own: torchxrayvision applies its final ReLU in place, which would hide them from autograd.
    # The maps are taken after that ReLU, as the classifier sees them; with global average pooling, Grad-CAM on
    # them is the class activation map of Zhou et al. (2016).
    feature_maps = F.relu(network.get_submodule("features")(x))
    pooled = F.adaptive_avg_pool2d(feature_maps, (1, 1)).flatten(1)
    logits = network.get_submodule("classifier")(pooled)
    return feature_maps, logits


ARCHITECTURES: dict[str, Architecture] = {
    XRV_DENSENET121: Architecture(XRV_DENSENET121, _build_xrv_densenet121, _xrv_densenet_cam_forward),
    # ImageNet-pretrained transfer-learning start that needs no network (the shipped default model).
    EFFICIENTNET_LITE0: Architecture(EFFICIENTNET_LITE0, build_efficientnet_lite0, _efficientnet_lite0_cam_forward),
    EFFICIENTNET_LITE0_FROZEN: Architecture(
        EFFICIENTNET_LITE0_FROZEN, _build_frozen_triage, _frozen_triage_cam_forward
    ),
}

#: Named in the design but not implemented in this version; asking for one gives a clear refusal.
PLANNED_ARCHITECTURES: frozenset[str] = frozenset()


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        if name in PLANNED_ARCHITECTURES:
            why = f"architecture {name!r} is planned but not implemented in this version"
        else:
            why = f"unknown architecture {name!r} (known: {', '.join(sorted(ARCHITECTURES))})"
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, why) from None


def build_network(manifest: ModelManifest) -> nn.Module:
    """The untrained network the manifest describes (one logit per label, in the manifest's label order)."""
    network = architecture(manifest.architecture).build(len(manifest.labels))
    # torchxrayvision's utilities read the output names from `targets` (and `pathologies`, its older name).
    described: Any = network
    described.targets = list(manifest.labels)
    described.pathologies = list(manifest.labels)
    return network


def load_network(manifest: ModelManifest, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """`build_network` with the weights loaded strictly, in eval mode and with gradients off for the parameters.

    Weights that do not fit (another architecture, another number of labels) are MODEL_UNAVAILABLE.
    """
    network = build_network(manifest)
    try:
        network.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the weights of model {manifest.name} {manifest.version} do not fit architecture "
            f"{manifest.architecture} with {len(manifest.labels)} labels ({first_line})",
        ) from exc
    network.eval()
    network.requires_grad_(False)
    return network


# ---------------------------------------------------------------------------------------------------------------
# torchxrayvision's published weight files


def xrv_published_weight_names() -> list[str]:
    """The torchxrayvision weight names (``xrv.models.model_urls`` keys) this importer understands."""
    xrv = import_xrv()
    return sorted(name for name in xrv.models.model_urls if name.startswith("densenet121-"))


def _check_weights_name(weights_name: str) -> None:
    known = xrv_published_weight_names()
    if weights_name not in known:
        raise ValueError(f"unsupported torchxrayvision weights {weights_name!r} (known: {', '.join(known)})")


def _published_model_globals() -> dict[str, Any]:
    """Everything a torchxrayvision DenseNet file may name, by the dotted name a pickle uses, and nothing more."""
    from torch.nn.backends import thnn

    xrv = import_xrv()
    allowed: list[Any] = [
        xrv.models.DenseNet,
        xrv.models._DenseBlock,
        xrv.models._DenseLayer,
        xrv.models._Transition,
        nn.Sequential,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.Linear,
        nn.Dropout,
        # Modules pickled by PyTorch < 1.4 name this function; torch keeps it (returning None) for such files.
        thnn._get_thnn_function_backend,
    ]
    named = {f"{item.__module__}.{item.__qualname__}": item for item in allowed}
    # What the legacy format needs besides the classes: torch's weights-only reader allows these by default.
    for rebuild in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        named[f"torch._utils.{rebuild}"] = getattr(torch._utils, rebuild)
    named["collections.OrderedDict"] = OrderedDict
    named["builtins.set"] = set
    named["__builtin__.set"] = set  # pickle protocol 2 writes Python 2 module names
    return named


def _restricted_pickle_module(allowed: Mapping[str, Any]) -> types.ModuleType:
    """A stand-in for the ``pickle`` module whose unpickler resolves only the globals in `allowed`."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            dotted = f"{module}.{name}"
            if dotted not in allowed:
                # Worded like torch's weights-only error, so `unpickling_failure` reports the name the same way.
                raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {dotted} is not on the allow-list")
            return allowed[dotted]

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("radtriage_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def _load_published_file(data: bytes) -> Any:
    allowed = _published_model_globals()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with torch.serialization.safe_globals(list(allowed.values())):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    # Legacy format: see the module docstring for why weights_only=True cannot read it and what guards it instead.
    with warnings.catch_warnings():
        # torch compares the saved source of each module class with today's and warns when they differ; they do
        # (torchxrayvision has changed since 2020), and it does not matter: only tensors are taken from the file.
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        return torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module(allowed)
        )


def _named_tensors(module: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers of a restored module, read from its attributes rather than its methods.

    A module object rebuilt from an older PyTorch's pickle may lack attributes that ``state_dict()`` needs today;
    its ``_parameters``, ``_buffers`` and ``_modules`` dictionaries have not changed shape.
    """
    attributes = vars(module)
    for kind in ("_parameters", "_buffers"):
        for name, tensor in attributes.get(kind, {}).items():
            if tensor is not None:
                yield prefix + name, tensor.detach()
    for name, child in attributes.get("_modules", {}).items():
        if child is not None:
            yield from _named_tensors(child, f"{prefix}{name}.")


def load_xrv_published_weights(
    path: str | os.PathLike[str], weights_name: str = "densenet121-res224-all"
) -> dict[str, torch.Tensor]:
    """The state dict in a torchxrayvision published weights file that a site provisioned locally.

    `weights_name` is the torchxrayvision name of the file (e.g. ``densenet121-res224-all``); it fixes the number
    of outputs and their labels. Never downloads. The file may be a whole pickled model (as torchxrayvision
    publishes them) or a plain state dict, in PyTorch's zip or legacy format; either way only allow-listed globals
    are resolved (see the module docstring). The result fits
    ``xrv.models.DenseNet(num_classes=len(model_urls[weights_name]["labels"]))``. Raises MODEL_UNAVAILABLE when
    the file is missing, names a global outside the allow-list, or does not fit.
    """
    _check_weights_name(weights_name)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, f"cannot read {path} ({exc.strerror})") from exc
    return _state_dict_from_published_bytes(data, weights_name, source=str(path))


def _state_dict_from_published_bytes(data: bytes, weights_name: str, *, source: str) -> dict[str, torch.Tensor]:
    xrv = import_xrv()
    try:
        loaded = _load_published_file(data)
    except Exception as exc:
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"{source} is not a readable torchxrayvision weights file ({unpickling_failure(exc)})",
        ) from exc

    if isinstance(loaded, nn.Module):
        tensors = dict(_named_tensors(loaded))
    elif isinstance(loaded, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        tensors = dict(loaded)
    else:
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE, f"{source} holds a {type(loaded).__name__}, not a model or a state dict"
        )
    # A published model may carry its operating points as a buffer; they belong in the manifest instead.
    tensors.pop("op_threshs", None)

    num_outputs = len(xrv.models.model_urls[weights_name]["labels"])
    network = _build_xrv_densenet121(num_outputs)
    try:
        network.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE, f"{source} does not fit torchxrayvision's {weights_name} ({first_line})"
        ) from exc
    return {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}


def import_xrv_published_weights(
    path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    expected_sha256: str,
    weights_name: str = "densenet121-res224-all",
    version: str | None = None,
    training_data: Sequence[Mapping[str, str]] | None = None,
) -> ModelManifest:
    """Turn a locally provisioned torchxrayvision weights file into a radtriage artefact in `dest_dir`.

    `expected_sha256` is the checksum the site recorded for the file it provisioned; a file that does not match is
    refused before it is deserialised. The artefact keeps only the outputs torchxrayvision trained for
    `weights_name` (labels that are empty in ``model_urls`` are dropped from the classifier), and uses
    torchxrayvision's published operating points (``op_threshs``) as thresholds: a finding is positive when
    sigmoid(logit) >= op_thresh, the same decision torchxrayvision's ``op_norm`` expresses as an output >= 0.5.
    """
    xrv = import_xrv()
    _check_weights_name(weights_name)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, f"cannot read {path} ({exc.strerror})") from exc
    actual = sha256_hex(data)
    if actual != expected_sha256.strip().lower():
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"{path} does not match the expected checksum: expected sha256 {expected_sha256.strip()[:12]}..., "
            f"found {actual[:12]}...; refusing to load it",
        )
    full = _state_dict_from_published_bytes(data, weights_name, source=str(path))

    spec = xrv.models.model_urls[weights_name]
    kept = [
        (index, label, float(threshold))
        for index, (label, threshold) in enumerate(zip(spec["labels"], spec["op_threshs"], strict=True))
        if label and math.isfinite(float(threshold))
    ]
    rows = torch.tensor([index for index, _, _ in kept])
    state = dict(full)
    state["classifier.weight"] = full["classifier.weight"][rows].clone()
    state["classifier.bias"] = full["classifier.bias"][rows].clone()

    manifest = ModelManifest(
        name=f"xrv-{weights_name}",
        version=version or actual[:12],
        architecture=XRV_DENSENET121,
        labels=tuple(label for _, label, _ in kept),
        thresholds={label: threshold for _, label, threshold in kept},
        input_size=int(spec.get("input_resolution", 224)),
        preprocessing_version=PREPROCESSING_VERSION,
        intended_use=(
            f"torchxrayvision's published {weights_name} model, imported unchanged for research and evaluation. "
            "Not validated at this site; not a medical device; a radiologist reads every study."
        ),
        limitations=(
            "Thresholds are torchxrayvision's published operating points, not calibrated on this site's images.",
            "Trained on public research data sets whose populations, devices and labelling (largely NLP-mined "
            "reports) differ from this site's.",
            f"Source file sha256 {actual}.",
        ),
        training_data=tuple(training_data)
        if training_data
        else (
            {
                "name": f"torchxrayvision {weights_name}: {spec.get('description', 'see its documentation')}",
                "licence": "unverified: check torchxrayvision's documentation and each source data set's terms",
            },
        ),
        placeholder=False,
    )
    return write_artefact(dest_dir, manifest, state)
