"""The model's own input gate, on the frozen backbone's pooled features: "is this an adult frontal chest film?"

Two tests, each fitted on the training films only (`fit_feature_gate`, `fit_child_detector`), each refusing with a
coded reason (`radtriage.app.core.errors.ErrorCode`) instead of scoring:

* **Novelty** (OUT_OF_DISTRIBUTION): the features of chest films from every training source span a subspace; an
  image whose features lie far from them (Mahalanobis distance within the top principal components) or outside
  them (RMS residual) above the `quantile` of the training films' own values is refused. ImageNet features
  describe what an image *is* (a photograph, noise, a knee, an inverted film), which is why this catches what the
  pixel-space eigen-chest test (`radtriage.model.ood`) lets through.
* **Child** (OUTSIDE_INTENDED_USE): a logistic child-vs-adult detector (age < 18 from the NIH and COVID-19
  collection metadata), thresholded so that few adult films are refused; it works without an age tag, and the DICOM
  header gate (`quality.check_header`) still refuses a tagged child first.

The figures (false refusals of adult frontal films per source, refusals of noise, photographs, non-chest and
inverted films, children) are in the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..app.core.errors import ErrorCode, TriageError

Floats = npt.NDArray[np.float64]

NOVELTY_REASON = "the image does not look like a frontal chest radiograph of the kind the model was trained on"
#: Fewer children than this in the training films: no child detector (a left-out source can leave too few).
MIN_CHILDREN = 10
INVERTED_REASON = "the film looks inverted (bones dark, lungs bright): wrong photometric interpretation or export"
#: Refuse as inverted at or above this probability.
INVERTED_LIMIT = 0.5
CHILD_REASON = "the film looks like a child's chest radiograph; the model is for adults"


def check_gate(residual: float, distance: float, child: float, limits: Sequence[float], child_limit: float, *,
               inverted: float = 0.0) -> None:
    """Refuse (TriageError) an image whose gate measures pass the limits: novelty first (a photograph or noise is
    "not like a chest film", whatever its polarity looks like), then polarity, then a child's film."""
    if not (np.isfinite(residual) and np.isfinite(distance)) or residual > limits[0] or distance > limits[1]:
        raise TriageError(ErrorCode.OUT_OF_DISTRIBUTION, f"{NOVELTY_REASON}; not analysed")
    if inverted >= INVERTED_LIMIT:
        raise TriageError(ErrorCode.IMAGE_QUALITY, f"{INVERTED_REASON}; not analysed")
    if child >= child_limit:
        raise TriageError(ErrorCode.OUTSIDE_INTENDED_USE, f"{CHILD_REASON}; not analysed")


@dataclass(frozen=True)
class FeatureGate:
    mean: Floats
    components: Floats  # (k, F) orthonormal rows
    variances: Floats
    residual_limit: float
    distance_limit: float

    def measures(self, features: npt.NDArray[Any]) -> Floats:
        """(N, 2): RMS residual and Mahalanobis distance, as `FrozenTriageNetwork.gate_measures` computes them."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        coefficients = centred @ self.components.T
        residual = np.clip((centred**2).sum(axis=1) - (coefficients**2).sum(axis=1), 0.0, None) / centred.shape[1]
        result: Floats = np.stack([np.sqrt(residual), (coefficients**2 / self.variances).sum(axis=1)], axis=1)
        return result

    def refuses(self, features: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        m = self.measures(features)
        result: npt.NDArray[np.bool_] = (m[:, 0] > self.residual_limit) | (m[:, 1] > self.distance_limit)
        return result


def fit_feature_gate(features: npt.NDArray[Any], *, k: int, quantile: float) -> FeatureGate:
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    _, singular, rows = np.linalg.svd(x - mean, full_matrices=False)
    variances = np.maximum(singular[:k] ** 2 / (len(x) - 1), 1e-12)
    provisional = FeatureGate(mean, rows[:k], variances, np.inf, np.inf)
    limits = np.quantile(provisional.measures(x), quantile, axis=0)
    return FeatureGate(mean, rows[:k], variances, float(limits[0]), float(limits[1]))


@dataclass(frozen=True)
class ChildDetector:
    weight: Floats  # (F,) on raw features
    bias: float
    limit: float  # refuse at probability >= limit
    #: Out-of-sample figures from the patient-grouped cross-validation the limit was set on.
    cross_validation: dict[str, float]

    def probability(self, features: npt.NDArray[Any]) -> Floats:
        result: Floats = 1.0 / (1.0 + np.exp(-(np.asarray(features, dtype=np.float64) @ self.weight + self.bias)))
        return result


def fit_inverted_detector(thumbs: npt.NDArray[Any], *, l2_c: float = 0.01) -> tuple[Floats, float, dict[str, float]]:
    """(weight, bias, cross-validated figures) of a logistic detector of inverted films on 64x64 thumbnails.

    Negatives are the training films, positives the same films inverted, which in model-input space is exactly
    their negative; 5-fold CV (each film and its inversion in the same fold) reports the error rates."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    x = np.asarray(thumbs, dtype=np.float64)
    both, labels = np.concatenate([x, -x]), np.r_[np.zeros(len(x)), np.ones(len(x))]
    groups = np.r_[np.arange(len(x)), np.arange(len(x))]
    model = LogisticRegression(C=l2_c, max_iter=2000)
    scores = cross_val_predict(model, both, labels, groups=groups, cv=GroupKFold(5), method="predict_proba")[:, 1]
    model.fit(both, labels)
    figures = {"films_refused": float(np.mean(scores[labels == 0] >= INVERTED_LIMIT)),
               "inverted_refused": float(np.mean(scores[labels == 1] >= INVERTED_LIMIT)), "films": float(len(x))}
    return model.coef_[0].astype(np.float64), float(model.intercept_[0]), figures


def fit_child_detector(features: npt.NDArray[Any], is_child: npt.NDArray[Any], groups: Sequence[str], *,
                       adult_refusal: float,
                       l2_c: float = 0.05) -> ChildDetector:
    """Logistic regression (standardised features, class-balanced) with the limit set so that at most
    `adult_refusal` of the training adults' out-of-sample scores reach it (5-fold patient-grouped scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features, dtype=np.float64), np.asarray(is_child).astype(int)
    if np.sum(y == 1) < MIN_CHILDREN:  # nothing to learn from: the detector refuses nobody, and says why
        return ChildDetector(np.zeros(x.shape[1]), -50.0, 1.0, {"children": float(np.sum(y == 1)),
                                                                 "adults": float(np.sum(y == 0))})
    model = make_pipeline(StandardScaler(), LogisticRegression(C=l2_c, class_weight="balanced", max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_predict(model, x, y, groups=list(groups), cv=cv, method="predict_proba")[:, 1]
    limit = float(np.quantile(scores[y == 0], 1.0 - adult_refusal))
    model.fit(x, y)
    scaler, logistic = model[0], model[1]
    weight = logistic.coef_[0] / scaler.scale_
    bias = float(logistic.intercept_[0] - weight @ scaler.mean_)
    limit = min(max(limit, 0.5), 1.0)
    figures = {"children": float(np.sum(y == 1)), "adults": float(np.sum(y == 0)),
               "children_refused": float(np.mean(scores[y == 1] >= limit)) if np.any(y == 1) else float("nan"),
               "adults_refused": float(np.mean(scores[y == 0] >= limit))}
    return ChildDetector(weight, bias, limit, figures)


__all__ = ["CHILD_REASON", "INVERTED_REASON", "NOVELTY_REASON", "ChildDetector", "FeatureGate", "check_gate",
           "fit_child_detector", "fit_feature_gate", "fit_inverted_detector"]
