"""Evaluation: metrics per finding, calibration, operating points, subgroups, plots and the report."""
