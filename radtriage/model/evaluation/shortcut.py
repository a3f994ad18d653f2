"""Two measurements beside the findings: the source shortcut and severity.

* `source_shortcut`: how well "which source is this image from" is predicted from a representation of the images
  (the model's penultimate features, or its output scores), by a cross-validated logistic regression with folds
  grouped by patient. Chance is 1 / number of sources for balanced accuracy. A representation that names the
  hospital lets a head learn "this hospital's look = abnormal"; the output scores are what the triage sees.
* `fit_severity` / `severity_cross_validation`: ridge regression from the pooled features to the radiologists'
  geographic-extent score (0-8, COVID-19 collection), judged by Spearman rank correlation on held-out patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

SEVERITY_ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def source_shortcut(representation: npt.NDArray[Any], sources: Sequence[str], groups: Sequence[str], *,
                    folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy and balanced accuracy of predicting the source from `representation`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(representation, dtype=np.float64)
    y = np.asarray(sources)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, x, y, groups=list(groups), cv=cv)
    names = sorted(set(y.tolist()))
    return {
        "images": int(len(y)),
        "dimensions": int(x.shape[1]),
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "chance_balanced_accuracy": 1.0 / len(names),
        "recall_per_source": {name: float(np.mean(predicted[y == name] == name)) for name in names},
        "method": f"logistic regression (standardised, C=0.1, class-balanced), {folds}-fold CV grouped by patient",
    }


def fit_severity(features: npt.NDArray[Any], extent: npt.NDArray[Any], alpha: float) -> tuple[npt.NDArray[Any], float]:
    """(weight, bias) on raw features of a ridge regression (standardised inputs) predicting geographic extent."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(np.asarray(features, np.float64), extent)
    scaler, ridge = model[0], model[1]
    weight = ridge.coef_ / scaler.scale_
    return weight, float(ridge.intercept_ - weight @ scaler.mean_)


def severity_cross_validation(features: npt.NDArray[Any], extent: npt.NDArray[Any], opacity: npt.NDArray[Any],
                              groups: Sequence[str], *, folds: int = 5) -> dict[str, Any]:
    """Patient-grouped CV: the ridge's alpha is chosen inside each training fold (nested), then the held-out
    patients' predictions are compared with the radiologists' scores."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features, np.float64), np.asarray(extent, np.float64)
    predicted = np.empty_like(y)
    alphas: list[float] = []
    for train, held in GroupKFold(n_splits=folds).split(x, y, groups=list(groups)):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=SEVERITY_ALPHAS)).fit(x[train], y[train])
        alphas.append(float(model[1].alpha_))
        predicted[held] = np.clip(model.predict(x[held]), 0.0, 8.0)
    chosen = float(np.median(alphas))
    return {
        "images": int(len(y)),
        "patients": len(set(groups)),
        "spearman_geographic_extent": float(spearmanr(predicted, y).statistic),
        "spearman_opacity": float(spearmanr(predicted, opacity).statistic),
        "mean_absolute_error": float(np.mean(np.abs(predicted - y))),
        "alpha": chosen,
        "method": f"ridge on pooled features, alpha chosen in each training fold, {folds}-fold CV grouped by patient",
        "predicted": predicted.tolist(),
    }


__all__ = ["fit_severity", "severity_cross_validation", "source_shortcut"]
