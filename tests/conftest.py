"""Shared tiny fixtures (built once per session) and plugin-manager isolation."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import (  # noqa: E402
    STUDENT_TEMPLATE,
    TEACHER_TEMPLATE,
    build_llama,
    build_lora,
    build_tokenizer,
    gsm_texts_and_data,
)

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A briefly trained teacher (hidden 64, 3 layers) and a random student (hidden 32,
    2 layers) sharing one tokenizer, plus a cross teacher (hidden 48) with a BPE of its own.

    The teacher's head has 16 padded rows beyond the tokenizer, like Qwen2.5-7B vs 1.5B.
    """
    root = tmp_path_factory.mktemp("tiny")
    texts, data, chat_data = gsm_texts_and_data(root, size=48)
    tokenizer = build_tokenizer(texts, root / "tokenizer", chat_template=STUDENT_TEMPLATE)
    build_llama(root / "teacher", tokenizer, hidden=64, layers=3, seed=1, extra_rows=16, train_on=texts)
    build_llama(root / "student", tokenizer, hidden=32, layers=2, seed=2)
    teacher_tokenizer = build_tokenizer(
        texts[::-1][:24], root / "cross_tokenizer", vocab_size=500, chat_template=TEACHER_TEMPLATE
    )
    build_llama(root / "cross_teacher", teacher_tokenizer, hidden=48, layers=3, seed=3, train_on=texts)
    return SimpleNamespace(
        root=root,
        tokenizer=tokenizer,
        teacher=root / "teacher",
        student=root / "student",
        data=data,
        chat_data=chat_data,
        teacher_tokenizer=teacher_tokenizer,
        cross_teacher=root / "cross_teacher",
    )


@pytest.fixture(scope="session")
def tiny_adapters(tiny) -> SimpleNamespace:
    """LoRA adapters as stage-1 runs leave them: for the teacher, the cross teacher, the
    student (another hidden size) and one that also adapts the teacher's output head."""
    root = tiny.root / "adapters"
    return SimpleNamespace(
        teacher=build_lora(tiny.teacher, root / "teacher", LINEAR, seed=5),
        cross_teacher=build_lora(tiny.cross_teacher, root / "cross_teacher", LINEAR, seed=6),
        student=build_lora(tiny.student, root / "student", LINEAR, seed=7),
        with_head=build_lora(tiny.teacher, root / "with_head", [*LINEAR, "lm_head"], seed=8),
    )


@pytest.fixture(autouse=True)
def _isolated_plugin_manager():
    """Axolotl's PluginManager is a process-wide singleton: clear it around each test."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    manager.plugins.clear()
    PluginManager._cfg = None
    yield
    manager.plugins.clear()
    PluginManager._cfg = None
