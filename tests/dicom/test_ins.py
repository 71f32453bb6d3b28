"""INS extraction and validation (PS3.3 C.7.1.1, Table 10-18; ANS Référentiel INS),
and the demographics used for matching. Synthetic values only: the INS below are made
up numbers with a computed key, under the *test* authorities where possible."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from coffre.dicom.ins import (
    INS_NIA,
    INS_NIA_TEST,
    INS_NIR,
    INS_NIR_TEST,
    Demographics,
    QualifiedIns,
    check_ins,
    demographics,
    demographics_from_attributes,
    demographics_from_dataset,
    family_prefix,
    ins_from_dataset,
    ins_from_json,
    ins_key,
    may_carry_ins,
)
from coffre.dicom.instance import parse_instance
from coffre.dicom.synthetic import (
    InstanceSpec,
    OtherPatientID,
    ins_identifier,
    make_dataset,
    make_instance,
)
from coffre.settings import Settings

# 2 68 04 75 123 456, key 64; the classic 1 84 12 76 451 089, key 46; Corsica 2A: key 88
VALID = "268047512345664"
CLASSIC = "184127645108946"
CORSICA = "269052A12345688"


def _limits() -> object:
    return Settings(data_dir=Path("/nonexistent")).limits


def _parsed_json(spec: InstanceSpec) -> str:
    return parse_instance(make_instance(spec), _limits()).dicom_json  # type: ignore[arg-type]


def test_key_is_97_minus_number_mod_97() -> None:
    assert ins_key("1841276451089") == 46
    assert ins_key("2680475123456") == 64
    # Corsica: 2A counts as 19, 2B as 18
    assert ins_key("269052A123456") == 97 - int("2690519123456") % 97
    assert ins_key("269052B123456") == 97 - int("2690518123456") % 97


@pytest.mark.parametrize("value", [VALID, CLASSIC, CORSICA])
def test_valid_values(value: str) -> None:
    assert check_ins(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("268047512345665", "key does not match"),  # wrong key
        ("26804751234566", "not 15 characters"),  # too short
        ("2680475123456640", "not 15 characters"),  # too long
        ("26804751234X664", "13 digits"),  # a letter
        ("2680A7512345664", "13 digits"),  # a letter where Corsica is not
        ("269052C12345688", "13 digits"),  # 2C is no department
        ("269052A12345689", "key does not match"),
        ("", "not 15 characters"),
    ],
)
def test_invalid_values_say_why_without_the_value(value: str, reason: str) -> None:
    message = check_ins(value)
    assert message is not None and reason in message
    assert value == "" or value not in message


def test_ins_in_other_patient_ids_sequence_from_dataset_and_json() -> None:
    spec = InstanceSpec(patient_id="CN1", other_patient_ids=(ins_identifier(VALID, INS_NIR),))
    expected = QualifiedIns(VALID, INS_NIR)
    assert ins_from_dataset(make_dataset(spec)).ins == expected
    dicom_json = _parsed_json(spec)
    assert may_carry_ins(dicom_json)
    assert ins_from_json(dicom_json).ins == expected
    assert ins_from_json(json.loads(dicom_json)).ins == expected
    assert expected.kind == "NIR" and not expected.test


def test_ins_as_the_qualified_top_level_patient_id() -> None:
    spec = InstanceSpec(patient_id=VALID, issuer_qualifiers=((INS_NIA_TEST, "ISO"),))
    found = ins_from_json(_parsed_json(spec)).ins
    assert found == QualifiedIns(VALID, INS_NIA_TEST)
    assert (found.kind, found.test) == ("NIA", True)


def test_no_qualifiers_no_ins() -> None:
    plain = _parsed_json(InstanceSpec(patient_id=VALID, issuer="INS-NIR"))
    assert not may_carry_ins(plain)
    assert ins_from_json(plain).ins is None and ins_from_json(plain).ignored == ()


def test_other_authorities_are_not_ins_and_not_reasons() -> None:
    spec = InstanceSpec(other_patient_ids=(OtherPatientID("X1", universal_entity_id="1.2.3.4"),))
    result = ins_from_json(_parsed_json(spec))
    assert result.ins is None and result.ignored == ()


def test_invalid_ins_is_ignored_with_a_reason() -> None:
    spec = InstanceSpec(other_patient_ids=(ins_identifier("268047512345600"),))
    result = ins_from_json(_parsed_json(spec))
    assert result.ins is None
    assert result.ignored == ("INS key does not match the number",)


def test_ins_oid_must_be_typed_iso() -> None:
    spec = InstanceSpec(other_patient_ids=(
        OtherPatientID(VALID, universal_entity_id=INS_NIR_TEST, universal_entity_id_type="DNS"),))
    result = ins_from_dataset(make_dataset(spec))
    assert result.ins is None
    assert result.ignored == ("INS assigning authority without UniversalEntityIDType ISO",)


def test_overlong_value_is_ignored() -> None:
    spec = InstanceSpec(other_patient_ids=(ins_identifier("1" * 64),))
    result = ins_from_json(_parsed_json(spec))
    assert result.ins is None and result.ignored == ("INS value is not 15 characters",)
    ds = Dataset()
    ds.PatientID = ""
    item = Dataset()
    with warnings.catch_warnings():  # pydicom warns about the overlong LO, on purpose here
        warnings.simplefilter("ignore")
        item.PatientID = "9" * 200
    qualifier = Dataset()
    qualifier.UniversalEntityID = INS_NIR
    qualifier.UniversalEntityIDType = "ISO"
    item.IssuerOfPatientIDQualifiersSequence = [qualifier]
    ds.OtherPatientIDsSequence = [item]
    assert ins_from_dataset(ds).ignored == ("INS value is too long",)


def test_production_nir_wins_over_nia_and_test() -> None:
    nia = "1" + CLASSIC[1:13]
    nia += f"{ins_key(nia):02d}"
    spec = InstanceSpec(other_patient_ids=(
        ins_identifier(nia, INS_NIA), ins_identifier(CLASSIC, INS_NIR_TEST), ins_identifier(VALID, INS_NIR)))
    assert ins_from_dataset(make_dataset(spec)).ins == QualifiedIns(VALID, INS_NIR)


def test_two_different_ins_of_one_kind_are_ignored() -> None:
    spec = InstanceSpec(other_patient_ids=(ins_identifier(VALID, INS_NIR), ins_identifier(CLASSIC, INS_NIR)))
    result = ins_from_dataset(make_dataset(spec))
    assert result.ins is None and result.ignored == ("several different INS in one object",)


def test_same_ins_twice_is_one() -> None:
    spec = InstanceSpec(patient_id=VALID, issuer_qualifiers=((INS_NIR, "ISO"),),
                        other_patient_ids=(ins_identifier(VALID, INS_NIR),))
    assert ins_from_dataset(make_dataset(spec)).ins == QualifiedIns(VALID, INS_NIR)


def test_lowercase_corsica_and_spaces_are_normalised() -> None:
    spec = InstanceSpec(other_patient_ids=(ins_identifier(" 269052a12345688 ", INS_NIR),))
    assert ins_from_dataset(make_dataset(spec)).ins == QualifiedIns(CORSICA, INS_NIR)


def test_hostile_json_shapes_give_no_ins() -> None:
    for model in ({"00100024": "x"}, {"00100024": {"Value": "x"}}, {"00101002": {"Value": [1, None, "a"]}},
                  {"00100020": {"Value": [VALID, VALID]}, "00100024": {"Value": [{"00400032": {}}]}}):
        assert ins_from_json(model).ins is None
    assert ins_from_json('{"00100024": [').ins is None
    assert ins_from_json('["00100024"]').ins is None


def test_demographics_are_normalised_like_names_in_the_index() -> None:
    demo = demographics("Le-Gall^Jean-Pierre Marie", "1968.04.12", "m")
    assert demo == Demographics("LE GALL", "JEAN PIERRE MARIE", "19680412", "M")
    assert demo.first_given == "JEAN"
    assert demo.family_prefix == "LE"
    assert demographics("Hélène^Zoé", "bad", "X") == Demographics("HELENE", "ZOE", "", "")


def test_demographics_from_dataset_and_parsed_attributes_agree() -> None:
    spec = InstanceSpec(patient_name="Martin^Claire", birth_date="19680412", sex="F")
    parsed = parse_instance(make_instance(spec), _limits())  # type: ignore[arg-type]
    from_attributes = demographics_from_attributes(parsed.attributes)
    assert from_attributes == demographics_from_dataset(make_dataset(spec))
    assert from_attributes == Demographics("MARTIN", "CLAIRE", "19680412", "F")


def test_family_prefix() -> None:
    assert family_prefix("MARTIN") == "MART"
    assert family_prefix("LE GALL") == "LE"
    assert family_prefix("") == ""
    assert family_prefix("O BRIEN") == "O"
