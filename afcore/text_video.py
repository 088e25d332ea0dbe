"""The text-conditional path of video editing (AF-SD; taught in notebooks/41_video_editing.py).

A Stable-Diffusion-layout model is four components, each loadable with ``from_pretrained`` from a hub id or a
local folder: ``unet`` (``UNet2DConditionModel``), ``vae`` (``AutoencoderKL``), ``text_encoder`` (CLIP) and
``tokenizer``. ``load_text_model`` loads them (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``; AF-LDM's
released alias-free weights have the same layout) and, with ``alias_free=True``, applies
``afcore.surgery.make_alias_free`` to the U-Net and the VAE. ``afcore.editing.edit_latents`` then edits with
``{"encoder_hidden_states": encode_prompt(...)}`` conditions: equivariant attention anchors self-attention on frame 0
and leaves the text cross-attention untouched, under classifier-free guidance. Offline, a hub id fails with a
message naming the parameter. ``save_standin`` writes a tiny random model of the same layout (for tests and the
smoke profile).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_text_model", "encode_prompt", "save_standin"]


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("the text encoder and tokenizer need transformers: pip install transformers "
                          "(or load with with_text=False and pass prompt embeddings yourself)") from e
    return transformers


def load_text_model(source: str, alias_free: bool = False, local_files_only: bool | None = None,
                    param: str = "video_sd_model", with_text: bool = True) -> dict:
    """``{"unet", "vae"[, "text_encoder", "tokenizer"]}`` from a local folder or hub id (subfolders as in SD);
    ``with_text=False`` skips the CLIP parts (they need ``transformers``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from afcore.surgery import make_alias_free

    if not source:
        raise ValueError(f"{param} is empty: give a local folder or a hub id such as "
                         "'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    local = Path(source).exists()
    kw = {"local_files_only": True} if local or local_files_only else {}
    try:
        parts = {"unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
                 "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)}
        if with_text:
            tr = _transformers()
            parts["text_encoder"] = tr.CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
            parts["tokenizer"] = tr.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{param}={source!r} could not be loaded ({type(e).__name__}: {str(e)[:200]}). Offline, "
                           f"set {param} to a local folder with unet/, vae/, text_encoder/ and tokenizer/ "
                           "subfolders (save_pretrained layout).") from e
    if alias_free:
        make_alias_free(parts["unet"])
        make_alias_free(parts["vae"])
    for k in ("unet", "vae", "text_encoder"):
        if k in parts:
            parts[k].eval()
    return parts


@torch.no_grad()
def encode_prompt(model: dict, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings (B, L, D) of ``prompts`` (padded to the tokenizer's maximum length)."""
    if "tokenizer" not in model:
        raise ValueError("this model was loaded without its text encoder (with_text=False)")
    tok = model["tokenizer"](prompts, padding="max_length", max_length=model["tokenizer"].model_max_length,
                             truncation=True, return_tensors="pt")
    return model["text_encoder"](tok.input_ids.to(model["text_encoder"].device))[0]


def save_standin(path: str | Path, seed: int = 0, with_text: bool | None = None) -> Path:
    """A tiny random SD-layout model (U-Net 32/64 channels with cross-attention, 3-level VAE and, when
    ``transformers`` is installed, a 2-layer CLIP text encoder with a word-level tokenizer) saved with
    ``save_pretrained``: the text path runs end to end offline."""
    import importlib.util
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    path = Path(path)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                         attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).save_pretrained(path / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  norm_num_groups=8).save_pretrained(path / "vae")
    if with_text is None:
        with_text = importlib.util.find_spec("transformers") is not None
    if not with_text:
        return path
    tr = _transformers()
    CLIPTextConfig, CLIPTextModel, CLIPTokenizer = tr.CLIPTextConfig, tr.CLIPTextModel, tr.CLIPTokenizer
    words = ["a", "photo", "sepia", "painting", "of", "cat", "street", "video"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    tdir = path / "tokenizer"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=8,
                        unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(tdir)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(path / "text_encoder")
    return path
