"""Drafts for routine studies and continuous evaluation against radiologists' final reports.

Start at `wiring.install_monitoring`; `reports` (final reports in and their labels), `metrics` (live
metrics, Prometheus and JSON), `drift`, `recalibration` and `feedback` (export for training) do the work.
"""
