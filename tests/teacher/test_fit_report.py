"""The teacher-fit verdict: when it warns, when it only notes, when it stays silent."""

import json

from axolotl_dskd.teacher.fit_report import TeacherFit


def _fit(teacher_acc: float, teacher_ce: float, student_ce: float = 2.0) -> TeacherFit:
    return TeacherFit(
        rows=64,
        response_tokens=700,
        teacher_acc=teacher_acc,
        teacher_ce=teacher_ce,
        student_ce=student_ce,
        align_ratio=1.0,
    )


def test_a_teacher_that_disagrees_with_the_data_gets_one_warning_naming_the_fixes() -> None:
    warning = _fit(teacher_acc=0.48, teacher_ce=1.2).warning()
    assert warning is not None and "\n" not in warning
    assert "teacher_acc 0.48 < 0.6" in warning and "52% of response tokens" in warning
    for fix in ("dskd_teacher_adapter", "dskd_on_policy_ratio", "dskd_kd_ratio"):
        assert fix in warning


def test_a_teacher_worse_than_the_untrained_student_is_warned_about() -> None:
    warning = _fit(teacher_acc=0.9, teacher_ce=2.5, student_ce=2.0).warning()
    assert warning is not None and "teacher_ce 2.500 > student_ce 2.000" in warning


def test_a_low_agreement_teacher_that_beats_the_student_on_the_gold_tokens_gets_the_open_ended_hint() -> None:
    chat_stage1 = _fit(teacher_acc=0.53, teacher_ce=2.306, student_ce=4.803).warning()
    assert chat_stage1 is not None and "\n" not in chat_stage1
    assert (
        "many acceptable phrasings" in chat_stage1
        and "teacher_ce 2.306 against the untrained student's 4.803" in chat_stage1
    )
    no_better = _fit(teacher_acc=0.53, teacher_ce=5.0, student_ce=4.803).warning()
    assert no_better is not None and "many acceptable phrasings" not in no_better


def test_a_fitting_teacher_gets_no_warning_and_a_near_one_hot_one_a_note() -> None:
    fitting = _fit(teacher_acc=0.84, teacher_ce=0.4)
    assert fitting.warning() is None and fitting.note() is None
    memorising = _fit(teacher_acc=1.0, teacher_ce=0.003)
    assert memorising.warning() is None and "teacher_ce 0.003 < 0.05" in memorising.note()
    assert json.loads(memorising.to_json())["fits"] is True
    assert "verdict" in memorising.table() and "fits" in memorising.table()


def test_no_response_tokens_is_said_plainly_without_blaming_the_teacher() -> None:
    fit = TeacherFit(rows=8, response_tokens=0, teacher_acc=0.0, teacher_ce=0.0, student_ce=0.0, align_ratio=1.0)
    assert fit.warning() == (
        "dskd: the first 8 training rows have no response tokens (every label is masked), so the teacher-fit check "
        "has nothing to score; check the dataset's `type:` and field names, `roles_to_train` and `train_on_inputs`"
    )
    assert fit.note() is None
