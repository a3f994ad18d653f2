"""Order messages as other systems write them, following the IHE Radiology scheduled-workflow examples:
ORM^O01 v2.3.1 with the Study Instance UID in ZDS-1 (RAD-4, v2.3.1 option) and OMI^O23 v2.5.1 with IPC
(RAD-4, v2.5.1 option). The patient data is made up."""

from __future__ import annotations

from collections.abc import Sequence

CODECS = {"": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}


def _encode(segments: Sequence[str], separator: str, charset: str) -> bytes:
    return separator.join(segments).encode(CODECS.get(charset, "ascii"))


def orm(
    control_id: str = "MSG00001",
    *,
    version: str = "2.3.1",
    control: str = "NW",
    placer: str = "PL1001",
    filler: str = "FL1001",
    study_uid: str = "1.2.826.0.1.3680043.10.543.1001",
    priority: str = "R",
    patient_id: str = "PAT1001",
    patient_name: str = "Doe^John",
    accession: str = "ACC1001",
    charset: str = "",
    separator: str = "\r",
    sender: str = "RIS|HOSP",
    extra: Sequence[str] = (),
    drop: Sequence[str] = (),
) -> bytes:
    segments = [
        f"MSH|^~\\&|{sender}|RADTRIAGE|HOSP|20261130080000||ORM^O01|{control_id}|P|{version}||||||{charset}",
        f"PID|||{patient_id}^^^HOSP^MR~99-{patient_id}^^^SSA^SS||{patient_name}||19700101|M|||1 Main St^^Springfield",
        "PV1||O|RAD^^^HOSP||||1234^Welby^Marcus",
        f"ORC|{control}|{placer}^RIS|{filler}^PACS||SC||^^^^^{priority}|||||1234^Welby^Marcus",
        segment(
            "OBR",
            {
                1: "1",
                2: f"{placer}^RIS",
                3: f"{filler}^PACS",
                4: "CXR^Chest X-ray PA^L",
                18: accession,  # placer field 1: the accession number (IHE RAD-4, v2.3.1)
                19: "RP1",  # placer field 2: requested procedure id
                20: "SPS1",  # filler field 1: scheduled procedure step id
                24: "CR",
                27: f"^^^^^{priority}",
            },
        ),
        f"ZDS|{study_uid}^100^Application^DICOM",
        *extra,
    ]
    segments = [s for s in segments if s[:3] not in drop]
    return _encode(segments, separator, charset)


def omi(
    control_id: str = "MSG00002",
    *,
    version: str = "2.5.1",
    control: str = "NW",
    placer: str = "PL2001",
    filler: str = "FL2001",
    study_uid: str = "1.2.826.0.1.3680043.10.543.2001",
    priority: str = "R",
    patient_id: str = "PAT2001",
    patient_name: str = "Roe^Jane",
    accession: str = "ACC2001",
    charset: str = "",
    separator: str = "\r",
    sender: str = "RIS|HOSP",
    extra: Sequence[str] = (),
    drop: Sequence[str] = (),
) -> bytes:
    segments = [
        f"MSH|^~\\&|{sender}|RADTRIAGE|HOSP|20261130080000||OMI^O23^OMI_O23|{control_id}|P|{version}||||||{charset}",
        f"PID|||{patient_id}^^^HOSP^MR||{patient_name}||19800101|F",
        "PV1||O",
        f"ORC|{control}|{placer}^RIS|{filler}^PACS||SC|||||||1234^Welby^Marcus",
        f"TQ1|||||||||{priority}^^HL70485",
        f"OBR||{placer}^RIS|{filler}^PACS|CXR^Chest X-ray PA^L",
        f"IPC|{accession}|RP1|{study_uid}|SPS1|CR",
        *extra,
    ]
    segments = [s for s in segments if s[:3] not in drop]
    return _encode(segments, separator, charset)


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}, so that positions are explicit."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\x0d"
