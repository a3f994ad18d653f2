"""Training: data split by patient, the training loop, hyperparameter search and release of a model artefact."""
