"""The served-model bundle: a folder that holds everything inference needs, and nothing pickled.

    model.safetensors   weights (float32, or float16 to halve the size; computed in float32)
    config.json         {"format", "version", "name", "model": CVAEConfig, "text_style", ...}
    tokenizer.model     the SentencePiece model
    lexicon.txt         the decoding lexicon (model.lexicon), optional: without it decoding is unconstrained
    reply_lm.safetensors  a bigram model of the training replies (model.replylm), optional: the reranker's
                        anti-language-model term; without it the reranker uses the decoder over probe contexts
    manifest.json       sha256 of every other file; the bundle's own id is the manifest's sha256
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import CVAEConfig
from .cvae import CVAE
from .files import StagedFiles, staged_files
from .lexicon import FILE as LEXICON_FILE
from .lexicon import Lexicon
from .quantize import MODES as QUANTIZE_MODES
from .replylm import FILE as REPLY_LM_FILE
from .replylm import ReplyLM
from .quantize import quantize_decoder
from .text import STYLES
from .tokenizer import Tokenizer

FORMAT = "cvae-dialog-bundle"
VERSION = 1
FILES = ("model.safetensors", "config.json", "tokenizer.model")
OPTIONAL_FILES = (LEXICON_FILE, REPLY_LM_FILE)
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_BUNDLE = PRETRAINED_DIR / "chat-cyclical"


class BundleError(RuntimeError):
    """A bundle that cannot be served; the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    model: CVAE
    tokenizer: Tokenizer
    config: CVAEConfig
    name: str
    text_style: str
    sha256: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    lexicon: Lexicon | None = None
    reply_lm: ReplyLM | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def save_bundle(out_dir: str | Path, model: CVAE, tokenizer: Tokenizer, name: str, text_style: str,
                extra: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                lexicon: Lexicon | None = None, reply_lm: ReplyLM | None = None) -> str:
    """Write a bundle; returns its sha256 (that of the manifest)."""
    if text_style not in STYLES:
        raise ValueError(f"unknown text style {text_style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    config = {"format": FORMAT, "version": VERSION, "name": name, "text_style": text_style,
              "model": model.cfg.to_dict(), "weights_dtype": str(dtype).removeprefix("torch."),
              **(extra or {})}
    # Every file is written before any replaces its old version, so a write that fails (a full disk) leaves
    # the bundle that was there whole. Readable by a service running as another user (a container's non-root one).
    with staged_files(out, mode=0o644) as staged:
        save_file(tensors, str(staged.path("model.safetensors")), metadata={"format": FORMAT})
        staged.path("config.json").write_bytes(json.dumps(config, indent=2, sort_keys=True).encode())
        staged.path("tokenizer.model").write_bytes(tokenizer.proto)
        for obj, fname in ((lexicon, LEXICON_FILE), (reply_lm, REPLY_LM_FILE)):
            if obj is not None:
                obj.save(staged.path(fname))
            else:
                staged.remove(fname)
        sha = _stage_manifest(out, staged)
    return sha


def _stage_manifest(out: Path, staged: StagedFiles) -> str:
    """Stage manifest.json over the bundle's files as they will be once ``staged`` is in place (a staged file's
    new content, else the file there); returns the bundle's sha256."""
    files = {f: staged.staged.get(f, out / f) for f in (*FILES, *OPTIONAL_FILES) if f not in staged.removed}
    files = {f: p for f, p in files.items() if p.is_file()}
    manifest = {"format": FORMAT, "version": VERSION, "files": {f: sha256_file(p) for f, p in files.items()}}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    staged.path("manifest.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(out: Path) -> str:
    """(Re)write manifest.json over the bundle's files; returns the bundle's sha256."""
    with staged_files(out, mode=0o644) as staged:
        sha = _stage_manifest(out, staged)
    for name in (*FILES, *OPTIONAL_FILES):
        if (out / name).is_file():  # readable by a service running as another user (a container's non-root one)
            os.chmod(out / name, 0o644)
    return sha


def add_lexicon(path: str | Path, lexicon: Lexicon, reply_lm: ReplyLM | None = None) -> str:
    """Put a decoding lexicon (and a reply language model) into an existing bundle, after checking it;
    returns the new sha256."""
    root = Path(path)
    verify_bundle(root)
    with staged_files(root, mode=0o644) as staged:
        lexicon.save(staged.path(LEXICON_FILE))
        if reply_lm is not None:
            reply_lm.save(staged.path(REPLY_LM_FILE))
        sha = _stage_manifest(root, staged)
    return sha


def verify_bundle(path: str | Path) -> tuple[dict[str, Any], str]:
    """Check the manifest and every file's sha256; returns (manifest, bundle sha256)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing manifest")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, AssertionError, TypeError):
        raise BundleError(f"{mpath}: not a valid manifest (JSON with a 'files' map)") from None
    for name in FILES:
        if name not in files:
            raise BundleError(f"{mpath}: does not list {name}")
    for name, digest in files.items():
        fpath = root / name
        if Path(name).name != name:
            raise BundleError(f"{mpath}: bad file name {name!r}")
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing file listed in the manifest")
        actual = sha256_file(fpath)
        if actual != digest:
            raise BundleError(f"{fpath}: sha256 mismatch with the manifest "
                              f"(file {actual[:12]}..., manifest {str(digest)[:12]}...): "
                              "the file is truncated, altered or from another bundle")
    return manifest, hashlib.sha256(raw).hexdigest()


def model_limits(path: str | Path) -> dict[str, int] | None:
    """The decoding limits a bundle's config.json records, read without loading (or checking) the bundle;
    None when it cannot be read. The service states them in its request schema before the model loads."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())["model"]
        return {"max_decode_len": int(cfg["max_decode_len"]), "latent_dim": int(cfg["latent_dim"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_bundle(path: str | Path = DEFAULT_BUNDLE, device: str | torch.device = "cpu",
                quantize: str = "none") -> Bundle:
    """Verify and load a bundle; ``quantize='int8'`` quantizes the decoder for CPU serving (model.quantize)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    root = Path(path)
    manifest, sha = verify_bundle(root)
    cpath = root / "config.json"
    try:
        config = json.loads(cpath.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format is {config.get('format')!r}, expected {FORMAT!r}")
        if int(config.get("version", 0)) > VERSION:
            raise ValueError(f"version {config.get('version')} is newer than this code reads ({VERSION})")
        cfg = CVAEConfig.from_stored(config["model"])  # without kgcvae_style: the legacy kgCVAE
        style = config["text_style"]
        if style not in STYLES:
            raise ValueError(f"unknown text_style {style!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{cpath}: invalid config: {e}") from None
    tpath = root / "tokenizer.model"
    try:
        tokenizer = Tokenizer.load(tpath)
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(f"{tpath}: cannot load tokenizer: {e}") from None
    if tokenizer.vocab_size != cfg.vocab_size:
        raise BundleError(f"{tpath}: vocabulary of {tokenizer.vocab_size} pieces does not match "
                          f"the model's vocab_size {cfg.vocab_size} in config.json")
    wpath = root / "model.safetensors"
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BundleError(f"{wpath}: cannot read weights: {e}") from None
    model = CVAE(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(p for p in (
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
            f"shape differs for {', '.join(wrong[:5])}" if wrong else "") if p)
        raise BundleError(f"{wpath}: weights do not fit the model in config.json ({detail})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    model.to(device).eval()
    if quantize != "none":
        try:
            quantize_decoder(model, quantize)
        except ValueError as e:
            raise BundleError(f"{root}: cannot quantize: {e}") from None
    lexicon = None
    if LEXICON_FILE in manifest["files"]:  # checked by verify_bundle; an unlisted file is not the bundle's
        try:
            lexicon = Lexicon.load(root / LEXICON_FILE)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{root / LEXICON_FILE}: cannot read the lexicon: {e}") from None
    reply_lm = None
    if REPLY_LM_FILE in manifest["files"]:
        try:
            reply_lm = ReplyLM.load(root / REPLY_LM_FILE)
        except (ValueError, OSError, SafetensorError) as e:
            raise BundleError(f"{root / REPLY_LM_FILE}: cannot read the reply language model: {e}") from None
        if reply_lm.vocab_size != cfg.vocab_size:
            raise BundleError(f"{root / REPLY_LM_FILE}: built for {reply_lm.vocab_size} pieces, the model has "
                              f"{cfg.vocab_size}")
    extra = {k: v for k, v in config.items() if k not in ("format", "version", "name", "text_style", "model")}
    return Bundle(model=model, tokenizer=tokenizer, config=cfg, name=str(config.get("name", root.name)),
                  text_style=style, sha256=sha, path=root, extra=extra, lexicon=lexicon,
                  reply_lm=reply_lm)
