"""Results into the PACS: DICOM SR (TID 1500) and heatmap Secondary Captures, sent by STOW-RS from an outbox."""
