"""A tiny, random-initialised Qwen-VL (Qwen3-VL or Qwen2.5-VL) with a small real tokenizer, built offline.

The tokenizer is a byte-level BPE trained on a few sentences (so any text encodes), wrapped in
PreTrainedTokenizerFast with the special tokens and chat template the Qwen-VL processors need; the processor is
assembled from it and the PIL (non-torchvision) Qwen2VL image processor. ``save_tiny_qwen_vl`` writes a folder
that ``from_pretrained`` loads, so tests exercise the labeller's real loading code."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The Qwen-VL chat template reduced to what the labeller sends (text and image parts, no tools, no video).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Identify the object shown in the red rectangle. Return the class name from chair, table, sofa, lamp.",
    "If no object is shown, return 'none'. The interactive element is shown in the red rectangle.",
    "Determine whether the element in the image can accomplish any task in the task list.",
    "If so, return the task index; otherwise return 'no match'. Tasks: 1. open the door 2. turn on the light",
    "chair table sofa bed cabinet shelf desk door window monitor keyboard mouse laptop book bottle cup mug",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, family: str = "qwen3_vl", max_pixels: int = 64 * 64):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 16 if family == "qwen3_vl" else 14
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": (2 * patch) ** 2, "longest_edge": max_pixels},
    )
    if family == "qwen3_vl":
        from transformers import Qwen3VLProcessor as cls
    else:
        from transformers import Qwen2_5_VLProcessor as cls
    return assemble_processor(cls, image_processor, tokenizer, CHAT_TEMPLATE)


def assemble_processor(cls, image_processor, tokenizer, chat_template):
    """The labeller's own torchvision-free assembly (no video processor), shared so both build alike."""
    from ros2_opentrack.perception.mllm import assemble_processor as assemble

    return assemble(cls, image_processor, tokenizer, chat_template)


def build_model(
    tokenizer,
    family: str = "qwen3_vl",
    seed: int = 0,
    text_hidden: int = 32,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_depth: int = 2,
):
    """Random weights with the real architecture; token ids agree with ``tokenizer``."""
    import torch

    torch.manual_seed(seed)
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    heads = max(2, text_hidden // 64)
    head_dim = text_hidden // heads
    third = head_dim // 2 // 3
    mrope = [head_dim // 2 - 2 * third, third, third]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    vheads = max(2, vision_hidden // 64)
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig as cfg_cls
        from transformers import Qwen3VLForConditionalGeneration as model_cls

        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=vheads,
            out_hidden_size=text_hidden,
            patch_size=16,
            deepstack_visual_indexes=list(range(min(1, vision_depth))),
            num_position_embeddings=256,
        )
    else:
        from transformers import Qwen2_5_VLConfig as cfg_cls
        from transformers import Qwen2_5_VLForConditionalGeneration as model_cls

        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=vheads,
            out_hidden_size=text_hidden,
            patch_size=14,
            window_size=56,
            fullatt_block_indexes=[vision_depth - 1],
        )
    config = cfg_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    model = model_cls(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_qwen_vl(folder, family: str = "qwen3_vl", seed: int = 0, **sizes) -> Path:
    """Write model + processor + tokenizer into ``folder`` (loadable with from_pretrained); returns the folder."""
    folder = Path(folder)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, family)
    model = build_model(tokenizer, family, seed=seed, **sizes)
    model.save_pretrained(folder)
    # processor.save_pretrained needs a video processor (torchvision); its two parts save on their own
    tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    return folder
