"""`axolotl_dskd.integration.chat_template`: the teacher's view rendered with the teacher's own template."""

from __future__ import annotations

import json

from axolotl.prompt_strategies import load as load_strategy
from axolotl.utils.dict import DictDefault

from axolotl_dskd.collate.cross_tokenizer import DSKDCrossTokenizerCollator


def test_each_side_uses_its_own_template_and_turns_align(tiny) -> None:
    cfg = DictDefault(
        sequence_len=2048,
        dskd_teacher_model=str(tiny.cross_teacher),
        dskd_teacher_tokenizer=None,
        dskd_teacher_trust_remote_code=False,
    )
    ds_cfg = {
        "type": "axolotl_dskd.integration.chat_template",
        "field_messages": "messages",
        "chat_template": "tokenizer_default",
    }
    strategy = load_strategy("axolotl_dskd.integration.chat_template", tiny.tokenizer, cfg, ds_cfg)
    row = json.loads(tiny.chat_data.read_text().splitlines()[0])
    tokenized = strategy.tokenize_prompt(row)
    student_text = tiny.tokenizer.decode(tokenized["input_ids"])
    teacher_text = tiny.teacher_tokenizer.decode(tokenized["teacher_input_ids"])
    assert student_text.startswith("### User:\n") and "[INST]" not in student_text
    assert teacher_text.startswith("[INST] ") and "### User" not in teacher_text
    answer = row["messages"][1]["content"]
    trained = [
        t for t, label in zip(tokenized["teacher_input_ids"], tokenized["teacher_labels"], strict=True) if label != -100
    ]
    assert tiny.teacher_tokenizer.decode(trained).startswith(answer)

    collator = DSKDCrossTokenizerCollator(
        tiny.tokenizer, padding=True, return_tensors="pt", teacher_tokenizer_path=str(tiny.cross_teacher)
    )
    batch = collator([tokenized])
    assert (
        batch["teacher_input_ids"][0, : len(tokenized["teacher_input_ids"])].tolist() == tokenized["teacher_input_ids"]
    )
    pairs = batch["dskd_pairs"]
    assert len(pairs) > 0.3 * (batch["labels"][:, 1:] != -100).sum()
    for _, s_pos, t_pos in pairs.tolist():  # aligned positions predict tokens spelling the same text
        student_token = tiny.tokenizer.convert_ids_to_tokens(batch["input_ids"][0, s_pos + 1].item())
        teacher_token = tiny.teacher_tokenizer.convert_ids_to_tokens(batch["teacher_input_ids"][0, t_pos + 1].item())
        assert student_token == teacher_token  # both byte-level BPE: same bytes, same spelling
