"""Synthetic state dicts with the official release's parameter names and shapes (tests and benchmarks of the
checkpoint converter)."""

from __future__ import annotations


# Sizes of a synthetic state dict with the names of the official release (gabfstr/CaptionFormer): D2SwinTransformer,
# MSDeformAttnPixelDecoder, VideoMultiScaleMaskedTransformerDecoder, LAVIS EVA ViT-g and BERT Q-Former, transformers
# OPT. TINY_OFFICIAL_SIZES is what the tests convert; RELEASE_OFFICIAL_SIZES has the release's shapes (Swin-B,
# 100 queries, DEC_LAYERS 10, EVA-g at 364 px, BERT-base Q-Former with 32 query tokens) for benchmarks.
TINY_OFFICIAL_SIZES = {
    "swin_embed": 32, "swin_depths": [1, 1, 2, 1], "swin_heads": [1, 2, 2, 4], "swin_window": 2,
    "hidden": 32, "queries": 5, "dec_layers": 3, "dec_ffn": 48, "enc_layers": 1, "enc_ffn": 64, "seg_heads": 2,
    "classes": 3, "vision": 16, "vision_layers": 1, "vision_ffn": 40, "vision_patch": 8, "vision_grid": 4,
    "qformer": 16, "qformer_layers": 2, "qformer_ffn": 32, "query_tokens": 4, "bert_vocab": 30, "bert_positions": 8,
    "text": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "ffn_dim": 32, "num_attention_heads": 2,
             "max_position_embeddings": 128, "word_embed_proj_dim": 16},
}
RELEASE_OFFICIAL_SIZES = {
    "swin_embed": 128, "swin_depths": [2, 2, 18, 2], "swin_heads": [4, 8, 16, 32], "swin_window": 12,
    "hidden": 256, "queries": 100, "dec_layers": 10, "dec_ffn": 2048, "enc_layers": 6, "enc_ffn": 1024,
    "seg_heads": 8, "classes": 1, "vision": 1408, "vision_layers": 39, "vision_ffn": 6144, "vision_patch": 14,
    "vision_grid": 26, "qformer": 768, "qformer_layers": 12, "qformer_ffn": 3072, "query_tokens": 32,
    "bert_vocab": 30523, "bert_positions": 512,
    # OPT-2.7B's width with 2 of its 32 layers (the LM is renamed key by key; its depth changes nothing)
    "text": {"vocab_size": 50272, "hidden_size": 2560, "num_hidden_layers": 2, "ffn_dim": 10240,
             "num_attention_heads": 32, "max_position_embeddings": 2048, "word_embed_proj_dim": 2560},
}


def _swin_relative_position_index(window: int):
    import torch

    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def official_style_state_dict(
    seed: int = 0,
    box_layers: int = 0,
    with_lm: bool = True,
    box_only: bool = False,
    sizes: dict | None = None,
) -> dict:
    """A random state dict with the official release's parameter names and shapes: VLN-style (masks, linear
    classifier, no box head) or, with ``box_only``, BenSMOT-style (``BOX_ONLY``: res3-res5 only, no mask branch, a
    2-layer box head). ``sizes``: ``TINY_OFFICIAL_SIZES`` (default) or ``RELEASE_OFFICIAL_SIZES``."""
    import torch

    z = dict(TINY_OFFICIAL_SIZES if sizes is None else sizes)
    if box_only:
        box_layers = 2
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    def linear(name, out_features, in_features, bias=True):
        sd[f"{name}.weight"] = t(out_features, in_features)
        if bias:
            sd[f"{name}.bias"] = t(out_features)

    def norm(name, dim):
        sd[f"{name}.weight"] = 1 + t(dim)
        sd[f"{name}.bias"] = t(dim)

    hidden = z["hidden"]
    # D2SwinTransformer
    e, w = z["swin_embed"], z["swin_window"]
    sd["backbone.patch_embed.proj.weight"] = t(e, 3, 4, 4)
    sd["backbone.patch_embed.proj.bias"] = t(e)
    norm("backbone.patch_embed.norm", e)
    for i, depth in enumerate(z["swin_depths"]):
        dim = e * 2**i
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}."
            norm(b + "norm1", dim)
            linear(b + "attn.qkv", 3 * dim, dim)
            sd[b + "attn.relative_position_bias_table"] = t((2 * w - 1) ** 2, z["swin_heads"][i])
            sd[b + "attn.relative_position_index"] = _swin_relative_position_index(w)
            linear(b + "attn.proj", dim, dim)
            norm(b + "norm2", dim)
            linear(b + "mlp.fc1", 4 * dim, dim)
            linear(b + "mlp.fc2", dim, 4 * dim)
        if i < 3:
            sd[f"backbone.layers.{i}.downsample.reduction.weight"] = t(2 * dim, 4 * dim)
            norm(f"backbone.layers.{i}.downsample.norm", 4 * dim)
        if not (box_only and i == 0):
            norm(f"backbone.norm{i}", dim)
    # MSDeformAttnPixelDecoder (res3-res5 in the deformable encoder, res2 in the FPN)
    p = "sem_seg_head.pixel_decoder."
    for i, channels in enumerate([e * 8, e * 4, e * 2]):
        sd[f"{p}input_proj.{i}.0.weight"] = t(hidden, channels, 1, 1)
        sd[f"{p}input_proj.{i}.0.bias"] = t(hidden)
        norm(f"{p}input_proj.{i}.1", hidden)
    sd[p + "transformer.level_embed"] = t(3, hidden)
    heads, levels, points = z["seg_heads"], 3, 4
    for n in range(z["enc_layers"]):
        le = f"{p}transformer.encoder.layers.{n}."
        linear(le + "self_attn.sampling_offsets", heads * levels * points * 2, hidden)
        linear(le + "self_attn.attention_weights", heads * levels * points, hidden)
        linear(le + "self_attn.value_proj", hidden, hidden)
        linear(le + "self_attn.output_proj", hidden, hidden)
        norm(le + "norm1", hidden)
        linear(le + "linear1", z["enc_ffn"], hidden)
        linear(le + "linear2", hidden, z["enc_ffn"])
        norm(le + "norm2", hidden)
    if not box_only:
        sd[p + "mask_features.weight"] = t(hidden, hidden, 1, 1)
        sd[p + "mask_features.bias"] = t(hidden)
        sd[p + "adapter_1.weight"] = t(hidden, e, 1, 1)
        norm(p + "adapter_1.norm", hidden)
        sd[p + "layer_1.weight"] = t(hidden, hidden, 3, 3)
        norm(p + "layer_1.norm", hidden)
    # VideoMultiScaleMaskedTransformerDecoder (DEC_LAYERS - 1 layers)
    q = "sem_seg_head.predictor."
    sd[q + "query_feat.weight"] = t(z["queries"], hidden)
    sd[q + "query_embed.weight"] = t(z["queries"], hidden)
    sd[q + "level_embed.weight"] = t(3, hidden)
    for i in range(z["dec_layers"] - 1):
        for kind, attn in (("self_attention", "self_attn"), ("cross_attention", "multihead_attn")):
            b = f"{q}transformer_{kind}_layers.{i}."
            sd[b + f"{attn}.in_proj_weight"] = t(3 * hidden, hidden)
            sd[b + f"{attn}.in_proj_bias"] = t(3 * hidden)
            linear(b + f"{attn}.out_proj", hidden, hidden)
            norm(b + "norm", hidden)
        b = f"{q}transformer_ffn_layers.{i}."
        linear(b + "linear1", z["dec_ffn"], hidden)
        linear(b + "linear2", hidden, z["dec_ffn"])
        norm(b + "norm", hidden)
    norm(q + "decoder_norm", hidden)
    linear(q + "class_embed", z["classes"] + 1, hidden)
    linear(q + "object_embed.layers.0", hidden, hidden)
    linear(q + "object_embed.layers.1", 2, hidden)
    for k in range(0 if box_only else 3):
        linear(f"{q}mask_embed.layers.{k}", hidden, hidden)
    for k in range(box_layers):
        linear(f"{q}box_embed.layers.{k}", 4 if k == box_layers - 1 else hidden, hidden)
    sd["criterion.empty_weight"] = torch.ones(z["classes"] + 1)
    # Blip2OPTVideo: EVA ViT, ln_vision, LAVIS BERT Q-Former, projections, transformers OPT
    c = "captioning_head."
    v = c + "visual_encoder."
    vision, patch = z["vision"], z["vision_patch"]
    sd[v + "cls_token"] = t(1, 1, vision)
    sd[v + "pos_embed"] = t(1, z["vision_grid"] ** 2 + 1, vision)
    sd[v + "patch_embed.proj.weight"] = t(vision, 3, patch, patch)
    sd[v + "patch_embed.proj.bias"] = t(vision)
    for i in range(z["vision_layers"]):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", vision)
        sd[b + "attn.qkv.weight"] = t(3 * vision, vision)
        sd[b + "attn.q_bias"] = t(vision)
        sd[b + "attn.v_bias"] = t(vision)
        linear(b + "attn.proj", vision, vision)
        norm(b + "norm2", vision)
        linear(b + "mlp.fc1", z["vision_ffn"], vision)
        linear(b + "mlp.fc2", vision, z["vision_ffn"])
    norm(c + "ln_vision", vision)
    bert, width = c + "Qformer.bert.", z["qformer"]
    sd[bert + "embeddings.word_embeddings.weight"] = t(z["bert_vocab"], width)
    sd[bert + "embeddings.position_embeddings.weight"] = t(z["bert_positions"], width)
    sd[bert + "embeddings.position_ids"] = torch.arange(z["bert_positions"])[None]
    norm(bert + "embeddings.LayerNorm", width)
    for i in range(z["qformer_layers"]):  # cross_attention_freq 2: even layers cross-attend
        b = f"{bert}encoder.layer.{i}."
        for block in ["attention", "crossattention"] if i % 2 == 0 else ["attention"]:
            kv_width = vision if block == "crossattention" else width
            linear(f"{b}{block}.self.query", width, width)
            linear(f"{b}{block}.self.key", width, kv_width)
            linear(f"{b}{block}.self.value", width, kv_width)
            linear(f"{b}{block}.output.dense", width, width)
            norm(f"{b}{block}.output.LayerNorm", width)
        for suffix in ("", "_query"):
            linear(f"{b}intermediate{suffix}.dense", z["qformer_ffn"], width)
            linear(f"{b}output{suffix}.dense", width, z["qformer_ffn"])
            norm(f"{b}output{suffix}.LayerNorm", width)
    sd[c + "query_tokens"] = t(1, z["query_tokens"], width)
    linear(c + "obj_linear_proj", width, hidden)
    linear(c + "opt_proj", z["text"]["hidden_size"], width)
    if with_lm:
        from transformers import OPTConfig, OPTForCausalLM

        torch.manual_seed(seed)
        opt = OPTForCausalLM(OPTConfig(**z["text"], pad_token_id=1, bos_token_id=2, eos_token_id=2))
        for key, value in opt.state_dict().items():
            sd[c + "opt_model." + key] = value
    return sd
