"""The instance selection rules (radtriage.imaging.selection): each error code, each preference, determinism."""

from __future__ import annotations

import random

import pytest

from radtriage.app.core.domain import InstanceInfo
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.ports import InstanceSelector
from radtriage.imaging.attributes import View, classify_view
from radtriage.imaging.selection import select_instance

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"


def instance(
    sop: str,
    *,
    series: str = "1.2.3.1",
    modality: str | None = "CR",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    description: str | None = None,
    sop_class: str | None = CR_SOP_CLASS,
) -> InstanceInfo:
    return InstanceInfo(
        study_instance_uid="1.2.3",
        series_instance_uid=series,
        sop_instance_uid=sop,
        modality=modality,
        body_part_examined=body_part,
        view_position=view,
        series_description=description,
        sop_class_uid=sop_class,
    )


def error_code(instances: list[InstanceInfo]) -> ErrorCode:
    with pytest.raises(TriageError) as caught:
        select_instance(instances)
    return caught.value.code


def test_select_instance_is_an_instance_selector() -> None:
    selector: InstanceSelector = select_instance  # checked by mypy; and it is what the service calls
    chosen = instance("1.1")
    assert selector([chosen]) == chosen


def test_empty_study_is_not_found() -> None:
    assert error_code([]) is ErrorCode.STUDY_NOT_FOUND


def test_study_without_cr_or_dx_is_not_a_radiograph() -> None:
    mr = instance("1.1", modality="MR", sop_class=MR_SOP_CLASS)
    report = instance("1.2", modality="SR", body_part=None, view=None, sop_class="1.2.840.10008.5.1.4.1.1.88.67")
    assert error_code([mr, report]) is ErrorCode.NOT_A_RADIOGRAPH


def test_radiographs_of_another_body_part_are_not_a_chest() -> None:
    assert error_code([instance("1.1", body_part="EXTREMITY"), instance("1.2", body_part="HAND")]) is (
        ErrorCode.NOT_A_CHEST
    )


@pytest.mark.parametrize("view", ["LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAT", "lateral"])
def test_only_non_frontal_views_is_lateral_only(view: str) -> None:
    assert error_code([instance("1.1", view=view)]) is ErrorCode.LATERAL_ONLY


def test_lateral_named_only_in_the_series_description_is_not_frontal() -> None:
    assert error_code([instance("1.1", view=None, description="Thorax LAT")]) is ErrorCode.LATERAL_ONLY


def test_errors_follow_the_order_of_the_rules() -> None:
    # An MR plus a lateral chest CR: the CR passes the radiograph rule, so the answer is about the view.
    instances = [instance("1.1", modality="MR", sop_class=MR_SOP_CLASS), instance("1.2", view="LL")]
    assert error_code(instances) is ErrorCode.LATERAL_ONLY


def test_pa_is_preferred_to_ap_and_ap_to_an_unnamed_view() -> None:
    pa = instance("9.3", series="1.2.3.9", view="PA")
    ap = instance("9.2", series="1.2.3.2", view="AP")
    unnamed = instance("9.1", series="1.2.3.1", view=None)
    lateral = instance("9.0", series="1.2.3.0", view="LL")
    assert select_instance([lateral, unnamed, ap, pa]) == pa
    assert select_instance([lateral, unnamed, ap]) == ap
    assert select_instance([lateral, unnamed]) == unnamed


def test_view_from_series_description_when_view_position_is_absent() -> None:
    ap = instance("9.1", series="1.2.3.1", view=None, description="CHEST AP PORTABLE")
    pa = instance("9.2", series="1.2.3.2", view=None, description="Thorax PA")
    assert select_instance([ap, pa]) == pa


def test_dx_is_kept_and_other_modalities_dropped() -> None:
    dx = instance("2.1", modality="DX", view="AP")
    ct = instance("2.0", modality="CT", view="PA", sop_class="1.2.840.10008.5.1.4.1.1.2")
    assert select_instance([ct, dx]) == dx


def test_absent_modality_falls_back_to_the_sop_class() -> None:
    cr_by_class = instance("3.1", modality=None, sop_class=CR_SOP_CLASS)
    assert select_instance([cr_by_class]) == cr_by_class
    secondary_capture = instance("3.2", modality=None, sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert error_code([secondary_capture]) is ErrorCode.NOT_A_RADIOGRAPH


@pytest.mark.parametrize("body_part", [None, "", "CHEST", "thorax", " LUNG "])
def test_chest_like_or_absent_body_part_is_kept(body_part: str | None) -> None:
    chosen = instance("4.1", body_part=body_part)
    assert select_instance([chosen]) == chosen


def test_choice_does_not_depend_on_the_order_the_archive_listed_instances() -> None:
    candidates = [instance(f"5.{n}", series=f"1.2.3.{n % 3}", view="PA") for n in range(8)]
    expected = min(candidates, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
    shuffler = random.Random(7)
    for _ in range(10):
        shuffler.shuffle(candidates)
        assert select_instance(candidates) == expected


def test_error_details_carry_no_uids() -> None:
    with pytest.raises(TriageError) as caught:
        select_instance([instance("1.2.826.0.1.3680043.99", view="LL")])
    assert "1.2.826" not in str(caught.value)


@pytest.mark.parametrize(
    ("view_position", "description", "expected"),
    [
        ("PA", "LAT", View.PA),  # View Position wins over the description
        (None, "PA + LAT", View.UNKNOWN),  # a description naming the whole examination decides nothing
        (None, "CHEST", View.UNKNOWN),
        (None, "PLATE", View.UNKNOWN),  # words are matched whole: "LAT" inside "PLATE" is not a lateral
        ("XYZ", None, View.NOT_FRONTAL),  # a View Position we do not know is not assumed frontal
    ],
)
def test_classify_view(view_position: str | None, description: str | None, expected: View) -> None:
    assert classify_view(view_position, description) is expected
