"""Wrap a PNG/JPEG chest X-ray as a DICOM Secondary Capture, so image files can take the DICOM pipeline.

Public chest X-ray collections are PNG/JPEG. Wrapped as DICOM and put in the image folder (or stored to a PACS),
they go through the same selection, decoding and scoring as images from a modality.

The object is a Secondary Capture Image (PS3.3 A.8.1; SOP class 1.2.840.10008.5.1.4.1.1.7) with the modules
that IOD requires: Patient, General Study, General Series, SC Equipment (Conversion Type WSD, "workstation",
PS3.3 C.8.6.1), General Image (Image Type DERIVED\\SECONDARY), Image Pixel (MONOCHROME2, 8 bits) and SOP Common.
Modality (default DX), Body Part Examined CHEST and, when given, View Position are added so that the selection
rules treat it as the chest radiograph it is. Patient Name is left empty (type 2): the caller's `patient_id` is
the only patient attribute, and nothing from the file name goes into the object.
"""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from os import PathLike

import numpy as np
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from .dicom_pixels import read_image_luminance


def _to_uint8(luminance: np.ndarray) -> np.ndarray:
    """8-bit images are stored unchanged; wider or float ones are stretched to 0-255 (contrast is all we keep)."""
    if luminance.dtype == np.uint8:
        return luminance
    values = np.asarray(luminance, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def wrap_image_as_dicom(
    image_path: str | PathLike[str],
    *,
    patient_id: str,
    study_uid: str | None = None,
    view_position: str | None = None,
    modality: str = "DX",
) -> bytes:
    """DICOM Part 10 bytes (Explicit VR Little Endian) of a Secondary Capture holding the image's luminance.

    A new Study Instance UID is made unless `study_uid` is given (to put several images in one study); the
    series and instance UIDs are always new. Raises `TriageError(UNREADABLE_IMAGE)` if the image cannot be read.
    """
    pixels = _to_uint8(read_image_luminance(image_path))
    now = datetime.now()
    sop_instance_uid = generate_uid()

    ds = Dataset()
    # SOP Common (PS3.3 C.12.1)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    # Patient (C.7.1.1): type 2 attributes present and empty
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series (C.7.3.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    if view_position:
        ds.ViewPosition = view_position
    # SC Equipment (C.8.6.1)
    ds.ConversionType = "WSD"
    # General Image (C.7.6.1)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.DerivationDescription = "Converted from a PNG/JPEG image file"
    # Burned In Annotation is left out: public images often carry burned-in markers or text, and we cannot know.
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
