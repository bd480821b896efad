"""`axolotl-dskd eval`: answer extraction, the three scores, and a real run on the tiny student."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from axolotl_dskd.commands.cli import main
from axolotl_dskd.commands.evaluate import final_answer, score


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("the cat sat on the mat", "the cat is on the mat"),
        ("a b c d", "d c b a"),
        ("nothing shared here", "totally different words"),
        ("She has 15 apples", "she has 15 apples left"),
    ],
)
def test_rouge_l_is_the_lcs_f1_of_the_words(prediction: str, reference: str) -> None:
    pred, ref = prediction.lower().split(), reference.lower().split()
    common = _lcs(pred, ref)
    expected = 0.0 if common == 0 else 100 * 2 * common / (len(pred) + len(ref))
    assert score("rouge", prediction, reference) == pytest.approx(expected)


def test_final_answers_and_exact_match() -> None:
    assert final_answer("work...\n#### 42 ") == "42"
    assert final_answer("first line\n\n  The Answer Is  7\n\n") == "the answer is 7"
    assert score("exact_match", "so\n#### 15", "steps\n#### 15") == 100.0
    assert score("exact_match", "so\n#### 16", "steps\n#### 15") == 0.0


def test_gsm_uses_the_reasoning_gym_scorer() -> None:
    reference = "3 + 12 = 15\n#### 15"
    assert score("gsm", "3 + 12 = 15\n#### 15", reference) == 100.0
    assert score("gsm", "she ends with 15 apples", reference) == 100.0  # no '####': the last number
    assert score("gsm", "#### 14", reference) == pytest.approx(1.0)  # a wrong number scores 0.01
    assert score("gsm", "I do not know", reference) == 0.0


def test_eval_command_scores_a_model_and_an_adapter(tiny, tmp_path, capsys) -> None:
    """A fresh LoRA adapter (B = 0) must not change a greedy answer."""
    model = AutoModelForCausalLM.from_pretrained(tiny.student)
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")
    tiny.tokenizer.save_pretrained(tmp_path / "adapter")
    common = ["eval", "--model", str(tiny.student), "--data", str(tiny.data), "--task", "gsm", "--limit", "3"]
    common += ["--max-new-tokens", "6", "--batch-size", "2"]
    assert main([*common, "--predictions", str(tmp_path / "base.jsonl")]) == 0
    base = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*common, "--adapter", str(tmp_path / "adapter"), "--predictions", str(tmp_path / "lora.jsonl")]) == 0
    with_adapter = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert base["n"] == with_adapter["n"] == 3 and base["task"] == "gsm" and base["decoding"] == "greedy"
    assert 0.0 <= base["score"] <= 100.0 and "accuracy" in base
    rows = [json.loads(line) for line in (tmp_path / "base.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].startswith("Below is an instruction that describes a task.")
    assert rows[0]["prompt"].endswith("### Response:\n") and rows[0]["reference"].rstrip().split()[-1].isdigit()
    lora_rows = [json.loads(line) for line in (tmp_path / "lora.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in lora_rows]


def test_eval_names_a_missing_field(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="field 'answer' missing in"):
        main(
            [
                "eval",
                "--model",
                str(tiny.student),
                "--data",
                str(tiny.data),
                "--task",
                "rouge",
                "--answer-field",
                "answer",
            ]
        )
