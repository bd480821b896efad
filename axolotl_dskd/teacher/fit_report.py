"""Does the teacher fit the training data? The pre-flight check and the `teacher-fit`
command share this verdict.

DSKD pulls the student towards the teacher's distributions and the gold CE pulls it
towards the data. When the teacher phrases answers its own way, the two disagree and the
student ends up worse than with SFT alone (measured: an untuned teacher with next-token
accuracy about 0.5 on the gold responses made DSKD clearly worse than SFT; the same
teacher after a short fine-tune on the task reached 0.84 and DSKD matched SFT).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# Below this share of gold next tokens predicted by the teacher, its KD targets contradict
# the data too often: between the untuned (about 0.5) and the fine-tuned (0.84) teacher above.
MIN_TEACHER_ACC = 0.6
# Below this teacher CE (nats per gold token) the teacher's distribution is nearly one-hot
# on the gold token: its targets repeat the gold answers (measured: teacher_ce 0.003 after a
# stage 1 on the training rows, and DSKD = SFT; docs/results.md).
ONE_HOT_TEACHER_CE = 0.05
# The pre-flight check's numbers and verdict, kept in the run's output_dir for scripts (no
# "teacher" in the name: nothing of the teacher's goes into the student's output).
FIT_RECORD = "dskd_fit_check.json"


@dataclass(frozen=True)
class TeacherFit:
    """Teacher and student scored on the same training rows, before any training."""

    rows: int
    response_tokens: int
    teacher_acc: float  # teacher argmax == gold next token, per paired response token
    teacher_ce: float  # teacher NLL of the gold token, where the teacher has that token
    student_ce: float  # the student's own NLL of the gold token, before training
    align_ratio: float  # paired response tokens per response token (1.0: one vocabulary)

    def problems(self) -> list[str]:
        """Why the teacher does not fit (empty when it does)."""
        found = []
        if self.teacher_acc < MIN_TEACHER_ACC:
            found.append(
                f"teacher_acc {self.teacher_acc:.2f} < {MIN_TEACHER_ACC}: the teacher's next token differs from "
                f"the gold one on {1 - self.teacher_acc:.0%} of response tokens"
            )
        if self.teacher_ce > self.student_ce:
            found.append(
                f"teacher_ce {self.teacher_ce:.3f} > student_ce {self.student_ce:.3f}: the teacher predicts the "
                "gold answers worse than the untrained student"
            )
        return found

    def warning(self) -> str | None:
        """One line for the log when the teacher does not fit, else None."""
        if self.response_tokens == 0:
            return (
                f"dskd: the first {self.rows} training rows have no response tokens (every label is masked), so "
                "the teacher-fit check has nothing to score; check the dataset's `type:` and field names, "
                "`roles_to_train` and `train_on_inputs`"
            )
        problems = self.problems()
        if not problems:
            return None
        return (
            f"dskd: the teacher does not fit this data ({'; '.join(problems)}; {self.rows} training rows). "
            "Its KD targets will pull the student away from the gold answers, and DSKD is then likely worse "
            "than plain SFT. Fine-tune the teacher on this dataset first (stage 1, see "
            "example_yamls/two-stage-1-teacher-lora.yml) and point dskd_teacher_adapter at its output_dir; "
            "or let the teacher score the student's own samples (dskd_on_policy_ratio); or lower dskd_kd_ratio."
            + self.open_ended_hint()
        )

    def open_ended_hint(self) -> str:
        """Where a reply has many acceptable phrasings, argmax agreement stays low even for a
        teacher fitted to the rows (measured 0.37 and 0.53 after a stage 1 on chat replies,
        docs/results.md round 5); its CE against the student's then tells more."""
        if self.teacher_acc >= MIN_TEACHER_ACC or self.teacher_ce >= self.student_ce:
            return ""
        return (
            f" If these replies have many acceptable phrasings, a teacher already fitted to them can stay below "
            f"teacher_acc {MIN_TEACHER_ACC}; its teacher_ce {self.teacher_ce:.3f} against the untrained student's "
            f"{self.student_ce:.3f} says how much it learned, and an SFT run beside this one says whether its KD "
            "targets help."
        )

    def note(self) -> str | None:
        """One informational line when the teacher fits so well that KD adds little."""
        if self.response_tokens == 0 or self.problems() or self.teacher_ce >= ONE_HOT_TEACHER_CE:
            return None
        return (
            f"dskd: the teacher reproduces the gold tokens almost exactly (teacher_ce {self.teacher_ce:.3f} < "
            f"{ONE_HOT_TEACHER_CE}): its KD targets carry little beyond the gold answers, so expect a student "
            "close to plain SFT's; a teacher that fits the task without memorising these rows (a stage 1 on "
            "other rows, fewer steps) keeps softer targets."
        )

    def table(self) -> str:
        rows = [
            ("training rows scored", f"{self.rows}"),
            ("response tokens", f"{self.response_tokens}"),
            ("align_ratio", f"{self.align_ratio:.3f}"),
            ("teacher_acc", f"{self.teacher_acc:.3f}  (warns below {MIN_TEACHER_ACC})"),
            ("teacher_ce", f"{self.teacher_ce:.3f}"),
            ("student_ce (before training)", f"{self.student_ce:.3f}"),
            ("verdict", "fits" if not self.problems() else "does NOT fit"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"fits": not self.problems()})
