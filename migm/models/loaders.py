"""Loaders for the real checkpoints users have, onto our model families.

Halton-MaskGIT v1.0 (`MaskGIT_ImageNet_512.pth`: a dict whose `model_state_dict` is the
`MaskTransformer` state, no `module.` prefix) onto the maskgit family:

    tok_emb.weight [K+1+C+1, d]                      -> tok_emb.weight (same row order)
    pos_emb [1, L+1, d]  (grid positions, then class) -> pos_emb (class first: rows rolled by one)
    first_layer.{0,2,4,6}.*  (LN, Linear, LN, Linear) -> first_layer.{0,1,3,5}.*
    transformer.layers.i.0.norm.*                     -> blocks.i.ln1.*
    transformer.layers.i.0.fn.mha.in_proj_{weight,bias}  -> blocks.i.attn.qkv.*  (q, k, v stacked alike)
    transformer.layers.i.0.fn.mha.out_proj.*          -> blocks.i.attn.proj.*
    transformer.layers.i.1.norm.*                     -> blocks.i.ln2.*
    transformer.layers.i.1.fn.net.{0,3}.*             -> blocks.i.mlp.{0,3}.*
    last_layer.{0,2,4}.*  (LN, Linear, LN)            -> last_layer.{0,1,3}.*
    bias [L+1, K+1+C+1]                               -> bias[:L, :K] (the rows and columns the logits use)

The first/last-layer LayerNorms use eps 1e-12 there (`io_norm_eps` in our config).

Lumina-DiMOO (Hugging Face layout: `model.safetensors.index.json` with a `weight_map` over
safetensors shards, LLaDA's llama block names) onto the llada family:

    model.transformer.wte.weight                  -> tok_emb.weight
    model.transformer.blocks.i.attn_norm.weight   -> blocks.i.attn_norm.weight
    model.transformer.blocks.i.{q,k,v}_proj.weight -> blocks.i.attn.{q,k,v}.weight
    model.transformer.blocks.i.attn_out.weight    -> blocks.i.attn.o.weight
    model.transformer.blocks.i.ff_norm.weight     -> blocks.i.mlp_norm.weight
    model.transformer.blocks.i.ff_proj.weight     -> blocks.i.mlp.gate.weight  (through SiLU)
    model.transformer.blocks.i.up_proj.weight     -> blocks.i.mlp.up.weight
    model.transformer.blocks.i.ff_out.weight      -> blocks.i.mlp.down.weight
    model.transformer.ln_f.weight                 -> norm.weight
    model.transformer.ff_out.weight               -> lm_head.weight (untied)

An embedding or head with more rows than the vocabulary (padding) is cut to it. Every
missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError, ConfigError
from ..fileio import read_json
from .llada import LLaDA, LLaDAConfig
from .maskgit import MaskGIT, MaskGITConfig
from .shortcut import Shortcut, ShortcutConfig
from .shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
from .torchzip import Archive, dry_run, load_state, materialize

# the published models' configurations
HALTON_IMAGENET512 = MaskGITConfig(codebook_size=1024, num_classes=1000, grid=32, width=768, depth=24, heads=16,
                                   mlp=3072)
# Lumina-DiMOO writes a prompt into its system/user turns and conditions the unconditional branch
# on an <uncondition> turn (ids as its tokenizer gives them: no BOS); prompts of up to 128 ids
DIMOO_TEMPLATE = "<system>Generate an image according to the text prompt.</system><user>{prompt}</user>"
DIMOO_UNCOND = [126332, 36289, 289, 3972, 4631, 297, 268, 3019, 12166, 13, 126333, 126334, 126351, 126335]
DIMOO_8B = LLaDAConfig(text_vocab=126356, codebook_size=8192, grid=64, width=4096, depth=32, heads=32, mlp=12288,
                       max_text=128, rope_theta=500000.0, pad_id=126081, mask_token=126336, boi_id=126349,
                       eoi_id=126350, boa_id=126354, eoa_id=126355, eol_id=126084, prompt_template=DIMOO_TEMPLATE,
                       uncond_ids=DIMOO_UNCOND)


def _check(mapped: dict, unexpected: list[str] = (), model: torch.nn.Module = None, source: str = "") -> None:
    want = model.state_dict()
    missing = sorted(set(want) - set(mapped))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {list(v.shape)}, the model wants {list(want[k].shape)}")


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    """Our name for a source key by the first matching (pattern, replacement), or None."""
    for pattern, target in table:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


# ---- Halton-MaskGIT ----

_HALTON = [
    (r"tok_emb\.weight", "tok_emb.weight"),
    (r"first_layer\.0\.(weight|bias)", r"first_layer.0.\1"),
    (r"first_layer\.2\.(weight|bias)", r"first_layer.1.\1"),
    (r"first_layer\.4\.(weight|bias)", r"first_layer.3.\1"),
    (r"first_layer\.6\.(weight|bias)", r"first_layer.5.\1"),
    (r"transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.mha\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.mha\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"transformer\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.net\.0\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.net\.3\.(weight|bias)", r"blocks.\1.mlp.3.\2"),
    (r"last_layer\.0\.(weight|bias)", r"last_layer.0.\1"),
    (r"last_layer\.2\.(weight|bias)", r"last_layer.1.\1"),
    (r"last_layer\.4\.(weight|bias)", r"last_layer.3.\1"),
]


def halton_to_maskgit(state: dict, cfg: MaskGITConfig, source: str = "checkpoint") -> MaskGIT:
    """A Halton-MaskGIT v1.0 `model_state_dict` as our MaskGIT (config `cfg`). Given meta tensors
    (`dry_run`), the model is built on the meta device: every check, no allocation."""
    model = _build(lambda: MaskGIT(replace(cfg, io_norm_eps=1e-12)), state, source)
    mapped, unexpected = {}, []
    for key, value in state.items():
        if key in ("pos_emb", "bias") and value.dim() != (3 if key == "pos_emb" else 2):
            raise CheckpointError(f"{source}: {key} is {list(value.shape)}, not a {3 if key == 'pos_emb' else 2}-d "
                                  "tensor")
        if key == "pos_emb":  # grid positions then the class token -> class token first
            mapped["pos_emb"] = torch.cat([value[:, -1:], value[:, :-1]], 1)
        elif key == "bias":
            mapped["bias"] = value[: cfg.num_tokens, : cfg.codebook_size]
        elif (target := _rename(key, _HALTON)) is not None:
            mapped[target] = value
        else:
            unexpected.append(key)
    _check(mapped, unexpected, model, source)
    model.load_state_dict(mapped, assign=_is_meta(state))
    return model.eval()


def halton_config(path: str | Path, codebook_size: int = 1024, heads: int = 16) -> MaskGITConfig:
    """A Halton-MaskGIT checkpoint's config, read from its tensors' shapes (the head count and the
    codebook size are not in them: 16 and the VQGAN's 1,024 codes for the released model)."""
    state, archive = _halton_state(Path(path))
    archive.close()
    try:
        vocab, width = _dims(state, "tok_emb.weight", 2)
        positions = _dims(state, "pos_emb", 3)[1]
        mlp = _dims(state, "transformer.layers.0.1.fn.net.0.weight", 2)[0]
    except KeyError as e:
        raise CheckpointError(f"{path} is not a Halton-MaskGIT checkpoint: it has no {e.args[0]}") from None
    grid = round(math.sqrt(max(positions - 1, 0)))
    depth = len({k.split(".")[2] for k in state if k.startswith("transformer.layers.")})
    if vocab - codebook_size - 2 < 1 or grid < 1 or grid * grid + 1 != positions or depth < 1:
        raise CheckpointError(f"{path}: its shapes give no Halton-MaskGIT (tok_emb {vocab} rows for "
                              f"{codebook_size} codes, pos_emb {positions} positions, {depth} layers)")
    return MaskGITConfig(codebook_size=codebook_size, num_classes=vocab - codebook_size - 2, grid=grid, width=width,
                         depth=depth, heads=heads, mlp=mlp, io_norm_eps=1e-12)


def _halton_state(path: Path) -> tuple[dict, Archive]:
    state, archive = load_state(path, ("model_state_dict",))
    return {k.removeprefix("module."): v for k, v in state.items()}, archive


def load_halton_maskgit(path: str | Path, cfg: MaskGITConfig | None = None) -> MaskGIT:
    """`MaskGIT_ImageNet_512.pth` (or any v1.0 checkpoint of that layout) onto maskgit-imagenet512."""
    path = Path(path)
    refs, archive = _halton_state(path)
    cfg = cfg or HALTON_IMAGENET512
    try:
        halton_to_maskgit(dry_run(archive, refs), cfg, str(path))  # every check first, on the meta device
        return halton_to_maskgit(materialize(archive, refs), cfg, str(path))
    finally:
        archive.close()


# ---- reading a released .pth: checked on the meta device, then read ----

def _is_meta(state: dict) -> bool:
    return any(torch.is_tensor(v) and v.is_meta for v in state.values())


def _build(make, state: dict, source: str) -> torch.nn.Module:
    """`make()` on the meta device when the state is meta tensors; a config it cannot build is the file's fault."""
    try:
        if _is_meta(state):
            with torch.device("meta"):
                return make()
        return make()
    except (ConfigError, TypeError, ValueError, ZeroDivisionError, AssertionError) as e:
        raise CheckpointError(f"{source}: its shapes give no model that can be built ({e})") from None


def _dims(state: dict, key: str, ndim: int) -> tuple[int, ...]:
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{key} is {list(shape)}; a {ndim}-d tensor was expected")
    return shape


# ---- Lumina-DiMOO ----

_DIMOO = [
    (r"model\.transformer\.wte\.weight", "tok_emb.weight"),
    (r"model\.transformer\.ln_f\.weight", "norm.weight"),
    (r"model\.transformer\.ff_out\.weight", "lm_head.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_norm\.weight", r"blocks.\1.attn_norm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.(q|k|v)_proj\.weight", r"blocks.\1.attn.\2.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_out\.weight", r"blocks.\1.attn.o.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_norm\.weight", r"blocks.\1.mlp_norm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_proj\.weight", r"blocks.\1.mlp.gate.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.up_proj\.weight", r"blocks.\1.mlp.up.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_out\.weight", r"blocks.\1.mlp.down.weight"),
]




def dimoo_config(directory: str | Path, codebook_size: int = 8192, heads: int = 32, grid: int = 64,
                 max_text: int = 128, uncond_ids: list[int] | None = None) -> LLaDAConfig:
    """A Lumina-DiMOO checkpoint's config: its width, depth and SwiGLU size from the tensors' shapes,
    the layout (special ids, RoPE) of Lumina-DiMOO; the head count and the grid are not in the tensors."""
    shapes = {}
    for f in _dimoo_shards(Path(directory)):
        try:
            with safe_open(str(f), framework="pt") as fh:
                shapes.update({k: fh.get_slice(k).get_shape() for k in fh.keys()})
        except Exception as e:  # safetensors raises its own error types on corrupt headers
            raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from None
    if "model.transformer.wte.weight" not in shapes:
        raise CheckpointError(f"{directory} holds no model.transformer.wte.weight: not a Lumina-DiMOO checkpoint")
    width = shapes["model.transformer.wte.weight"][1]
    depth = len({k.split(".")[3] for k in shapes if k.startswith("model.transformer.blocks.")})
    mlp = shapes["model.transformer.blocks.0.ff_proj.weight"][0]
    return replace(DIMOO_8B, width=width, depth=depth, heads=heads, mlp=mlp, grid=grid, max_text=max_text,
                   codebook_size=codebook_size, uncond_ids=list(DIMOO_UNCOND if uncond_ids is None else uncond_ids))


def _dimoo_shards(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists() or index.is_symlink():
        doc = read_json(index, "safetensors index", CheckpointError)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} is not a safetensors index: its weight_map is not an object "
                                  "of tensor name -> shard file")
        if not all(isinstance(n, str) for n in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map names a shard that is not a file name")
        shards = sorted(set(weight_map.values()))
        if not all(n == Path(n).name and n.endswith(".safetensors") for n in shards):
            raise CheckpointError(f"{index} names shards outside its directory; a checkpoint names its own files only")
        for n in shards:
            if not (directory / n).is_file():
                raise CheckpointError(f"shard {n} named in {index.name} is missing from {directory}")
        return [directory / n for n in shards]
    if (directory / "model.safetensors").exists():
        return [directory / "model.safetensors"]
    raise CheckpointError(f"{directory} has neither model.safetensors.index.json nor model.safetensors")


def load_dimoo(directory: str | Path, cfg: LLaDAConfig | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.bfloat16) -> LLaDA:
    """A Lumina-DiMOO checkpoint directory (sharded safetensors + index JSON) onto dimoo-8b.

    The model is built on the meta device and each tensor assigned as it is read, so only
    the weights themselves are ever in memory (16 GB in bf16 for the 8B)."""
    cfg = cfg or DIMOO_8B
    directory = Path(directory)
    shards = _dimoo_shards(directory)
    with torch.device("meta"):
        model = LLaDA(cfg)
    mapped, unexpected = {}, []
    for f in shards:
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for key in fh.keys():
                    target = _rename(key, _DIMOO)
                    if target is None:
                        unexpected.append(key)
                        continue
                    t = fh.get_tensor(key)
                    if target in ("tok_emb.weight", "lm_head.weight") and t.shape[0] > cfg.vocab:
                        t = t[: cfg.vocab]  # padded vocabulary rows are never used
                    mapped[target] = t.to(dtype)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types on corrupt headers
            raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from None
    _check(mapped, unexpected, model, str(directory))
    model.load_state_dict(mapped, assign=True)
    model.init_buffers(device)
    return model.eval()


# ---- the released MIGM-Shortcut weights ----

_MASKGIT_SHORTCUT = [
    (r"proj_in\.(weight|bias)", r"proj_in.\1"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
    (r"new_token_proj_in\.(weight|bias)", r"proj_tok.\1"),
    (r"blocks\.(\d+)\.cross_attn\.norm\.(weight|bias)", r"blocks.\1.norm_q.\2"),
    (r"blocks\.(\d+)\.cross_attn\.fn\.mha\.out_proj\.(weight|bias)", r"blocks.\1.attn1.proj.\2"),
    (r"blocks\.(\d+)\.cross_attn_ff\.norm\.(weight|bias)", r"blocks.\1.norm_mlp1.\2"),
    (r"blocks\.(\d+)\.cross_attn_ff\.fn\.net\.(0|3)\.(weight|bias)", r"blocks.\1.mlp1.\2.\3"),
    (r"blocks\.(\d+)\.self_attn\.norm\.(weight|bias)", r"blocks.\1.norm_self.\2"),
    (r"blocks\.(\d+)\.self_attn\.fn\.mha\.out_proj\.(weight|bias)", r"blocks.\1.attn2.proj.\2"),
    (r"blocks\.(\d+)\.self_attn_ff\.norm\.(weight|bias)", r"blocks.\1.norm_mlp2.\2"),
    (r"blocks\.(\d+)\.self_attn_ff\.fn\.net\.(0|3)\.(weight|bias)", r"blocks.\1.mlp2.\2.\3"),
    (r"last_layer\.(0|1|3)\.(weight|bias)", r"out.\1.\2"),
    (r"time_embedder\.mlp\.(0|2)\.(weight|bias)", r"time.\1.\2"),
    (r"adaLN_modulation\.(weight|bias)", r"modulation.\1"),
]
_IN_PROJ = re.compile(r"blocks\.(\d+)\.(cross|self)_attn\.fn\.mha\.in_proj_(weight|bias)")

_DIMOO_SHORTCUT = [
    (r"proj_in\.(weight|bias)", r"proj_in.\1"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
    (r"new_token_proj_in\.(weight|bias)", r"proj_tok.\1"),
    (r"ln_f\.weight", "norm_out.weight"),
    (r"time_embedder\.mlp\.(0|2)\.(weight|bias)", r"time.\1.\2"),
    (r"adaLN_modulation\.(weight|bias)", r"modulation.\1"),
] + [(rf"blocks\.(\d+)\.{part}\.{src}\.weight", rf"{dst}.\1.{prefix}{tgt}.weight")
     for part, dst, prefix in (("cross_attn", "cross", "block."), ("self_attn", "blocks", ""))
     for src, tgt in (("attn_norm", "attn_norm"), ("q_proj", "attn.q"), ("k_proj", "attn.k"), ("v_proj", "attn.v"),
                      ("attn_out", "attn.o"), ("ff_norm", "mlp_norm"), ("ff_proj", "mlp.gate"), ("up_proj", "mlp.up"),
                      ("ff_out", "mlp.down"))]


def _state_dict_file(path: str | Path) -> tuple[dict, Archive]:
    """A released `.pth` state dict's tensors (read by the restricted unpickler: no code runs, other
    objects are dropped), still unread: (name -> TensorRef, archive)."""
    state, archive = load_state(path)
    if not state:
        archive.close()
        raise CheckpointError(f"{path} holds no flat state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, archive


def _bottleneck(state: dict, path, base_width: int) -> tuple[int, int]:
    """(inner, width) of a shortcut's proj_in, checked: the width is the base's, the bottleneck divides it."""
    if "proj_in.weight" not in state:
        raise CheckpointError(f"{path} is not a shortcut state dict (no proj_in.weight)")
    inner, width = _dims(state, "proj_in.weight", 2)
    if width != base_width or inner < 1 or width % inner:
        raise CheckpointError(f"{path}: proj_in.weight is [{inner}, {width}]; a shortcut for this base takes its "
                              f"width {base_width} down to a bottleneck that divides it")
    return inner, width


def load_maskgit_shortcut(path: str | Path, base: MaskGIT, heads: int = 16) -> torch.nn.Module:
    """The released MaskGIT-Shortcut weights (`maskgit-shortcut.pth`, a flat state dict) for `base`:
    the bottleneck and block count are read from the tensors; the head count is not in them (16 released)."""
    refs, archive = _state_dict_file(path)
    try:
        _bottleneck(refs, path, base.cfg.width)
        _maskgit_shortcut(dry_run(archive, refs), base, heads, path)  # every check first, on the meta device
        return _maskgit_shortcut(materialize(archive, refs), base, heads, path)
    finally:
        archive.close()


def _maskgit_shortcut(state: dict, base: MaskGIT, heads: int, path) -> torch.nn.Module:
    inner, width = _bottleneck(state, path, base.cfg.width)
    n_block = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    c = base.cfg
    cfg = ShortcutConfig(width=width, codebook_size=c.codebook_size, vocab=c.vocab, num_tokens=c.num_tokens,
                         ratio=width // inner, n_block=n_block, heads=heads, layout="upstream")
    model = _build(lambda: Shortcut(cfg), state, str(path))
    mapped, unexpected = {}, []
    for key, value in state.items():
        split = _IN_PROJ.fullmatch(key)
        if split:  # q, k, v stacked: our attention keeps q apart from the fused k, v
            i, kind, what = split.groups()
            attn = f"blocks.{i}.attn{1 if kind == 'cross' else 2}"
            mapped[f"{attn}.q.{what}"], mapped[f"{attn}.kv.{what}"] = value[:inner], value[inner:]
        elif (target := _rename(key, _MASKGIT_SHORTCUT)) is not None:
            mapped[target] = value
        else:
            unexpected.append(key)
    _check(mapped, unexpected, model, str(path))
    if _is_meta(state):
        return model  # the dry run: every shape fits
    model.load_state_dict(mapped)
    model.load_base_embeddings(base)
    return model.eval()


def load_dimoo_shortcut(path: str | Path, base: LLaDA) -> torch.nn.Module:
    """The released DiMOO-Shortcut weights (`dimoo-shortcut.pth`, a flat state dict) for `base`."""
    refs, archive = _state_dict_file(path)
    try:
        inner, width = _bottleneck(refs, path, base.cfg.width)
        state = dry_run(archive, refs)  # every declared shape checked against the archive before any read
        n_block = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        mlp = state["blocks.0.self_attn.ff_proj.weight"].shape[0] if "blocks.0.self_attn.ff_proj.weight" in state \
            else 0
        cfg = LLaDAShortcutConfig(base=base.cfg.to_dict(), ratio=width // inner, n_block=n_block, mlp=mlp)
        model = _build(lambda: LLaDAShortcut(cfg), state, str(path))  # on the meta device
        _check(*_map_dimoo_shortcut(state), model=model, source=str(path))
        state = materialize(archive, refs)
    finally:
        archive.close()
    model.load_state_dict(_map_dimoo_shortcut(state)[0], assign=True)
    model.init_buffers(state["proj_in.weight"].device)
    model.load_base_embeddings(base)
    return model.eval()


def _map_dimoo_shortcut(state: dict) -> tuple[dict, list[str]]:
    mapped, unexpected = {}, []
    for key, value in state.items():
        target = _rename(key, _DIMOO_SHORTCUT)
        if target is None:
            unexpected.append(key)
        else:
            mapped[target] = value
    return mapped, unexpected
