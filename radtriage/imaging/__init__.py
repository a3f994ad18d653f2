"""Images: where they come from and how they are read.

- `folder_source.FolderStudySource`, `dicomweb_source.DicomwebStudySource`: the two `StudySource` adapters.
- `selection.select_instance`: which instance of a study to score (the `InstanceSelector`).
- `dicom_pixels`: DICOM bytes to a display-ready grayscale array, and the header checks before scoring.
- `wrap.wrap_image_as_dicom`: a PNG/JPEG chest X-ray as a DICOM Secondary Capture.
- `attributes`: the radiograph / chest / view vocabulary that selection and the header checks share.
"""
