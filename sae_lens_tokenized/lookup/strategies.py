"""Unigram tables: the model's activation for a token seen (almost) without context.

The unigram of token t under a strategy is the activation at the hook, at the last
position, of a short prompt built from a template (Dooms & Wilhelm, Sec. 3; the follow-up
note "Massive activations and why <bos> is important"). Template items:

* ``t``: the token itself;
* ``bos``, ``eos``, ``pad``: the tokenizer's special tokens;
* ``space``: the tokenizer's single-space token;
* an integer: that literal token id.

Strings are comma-separated: ``"bos,t"`` (the method's default), ``"t"``, ``"t,t"``,
``"space,t"``, ``"space,space,t"``, ``"220,t"`` ([X, t]) and the control ``"bos,220"`` (no
t: the same prompt for every row). Lists work too: ``["bos", "t"]``, ``[220, "t"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SPECIAL_ITEMS = ("bos", "eos", "pad", "space")
#: The strategies this package knows by name, in the order ``auto`` prefers them on ties
#: (the method's default first). One list for auto, the analyses and the benchmarks.
STRATEGIES = ("bos,t", "space,t", "t,t", "space,space,t", "eos,t", "t")
BUILTIN_STRATEGIES = STRATEGIES


class UnigramStrategyError(ValueError):
    """A unigram strategy cannot be parsed or resolved for a model."""


@dataclass(frozen=True)
class UnigramStrategy:
    """A parsed template. ``items`` holds 't', special names, or ints."""

    items: tuple[str | int, ...]

    @classmethod
    def parse(cls, strategy: str | Sequence[str | int] | UnigramStrategy) -> UnigramStrategy:
        if isinstance(strategy, UnigramStrategy):
            return strategy
        if isinstance(strategy, str):
            if strategy.strip() == "auto":
                raise UnigramStrategyError(
                    "strategy 'auto' is chosen by measurement (select_unigram_strategy), "
                    "not parsed as a template"
                )
            raw: list[str | int] = [p.strip() for p in strategy.split(",")]
        else:
            raw = list(strategy)
        if not raw or any(p == "" for p in raw):
            raise UnigramStrategyError(
                f"empty unigram strategy template {strategy!r}; use e.g. 'bos,t' or ['bos', 't']"
            )
        items: list[str | int] = []
        for p in raw:
            if isinstance(p, bool):
                raise UnigramStrategyError(f"bad item {p!r} in unigram strategy {strategy!r}")
            if isinstance(p, int):
                items.append(p)
                continue
            if not isinstance(p, str):
                raise UnigramStrategyError(f"bad item {p!r} in unigram strategy {strategy!r}")
            low = p.strip().lower()
            if low.lstrip("-").isdigit():
                items.append(int(low))
            elif low == "t" or low in SPECIAL_ITEMS:
                items.append(low)
            else:
                raise UnigramStrategyError(
                    f"unknown item {p!r} in unigram strategy {strategy!r}: items are 't', "
                    f"{', '.join(repr(s) for s in SPECIAL_ITEMS)} or a token id"
                )
        return cls(tuple(items))

    @property
    def has_t(self) -> bool:
        return "t" in self.items

    def __str__(self) -> str:
        return ",".join(str(i) for i in self.items)

    def resolve(self, tokenizer: Any, d_vocab: int, model_label: str = "the model") -> list[int | None]:
        """Token ids of the template, ``None`` standing for t. Raises naming template and model."""
        out: list[int | None] = []
        for item in self.items:
            if item == "t":
                out.append(None)
            elif isinstance(item, int):
                if not 0 <= item < d_vocab:
                    raise UnigramStrategyError(
                        f"unigram strategy '{self}': token id {item} is out of range for "
                        f"{model_label} (d_vocab={d_vocab})"
                    )
                out.append(item)
            else:
                out.append(_special_id(item, tokenizer, self, model_label))
                if out[-1] is not None and not 0 <= out[-1] < d_vocab:  # type: ignore[operator]
                    raise UnigramStrategyError(
                        f"unigram strategy '{self}': {item} id {out[-1]} is out of range for "
                        f"{model_label} (d_vocab={d_vocab})"
                    )
        return out


def _special_id(item: str, tokenizer: Any, strategy: UnigramStrategy, model_label: str) -> int:
    if tokenizer is None:
        raise UnigramStrategyError(
            f"unigram strategy '{strategy}' uses '{item}' but {model_label} has no tokenizer; "
            "use literal token ids (e.g. '0,t') or the strategy 't'"
        )
    if item == "space":
        ids = tokenizer.encode(" ", add_special_tokens=False)
        if len(ids) != 1:
            raise UnigramStrategyError(
                f"unigram strategy '{strategy}': {model_label}'s tokenizer encodes ' ' as "
                f"{len(ids)} tokens {ids}, not one; use a literal token id instead of 'space'"
            )
        return int(ids[0])
    token_id = getattr(tokenizer, f"{item}_token_id", None)
    if token_id is None:
        alternatives = "'space,t' or 't'" if item == "bos" else "'bos,t' or 'space,t'"
        raise UnigramStrategyError(
            f"unigram strategy '{strategy}' needs a {item.upper()} token but {model_label}'s "
            f"tokenizer has none ({item}_token_id is None); choose another strategy, e.g. "
            f"{alternatives}, or a literal token id"
        )
    return int(token_id)


#: ``unigram_strategy`` value for the lookup estimated from the training data
DATA_STRATEGY = "data"
#: ``unigram_strategy`` recorded for a lookup initialised from a table the user passed
PRECOMPUTED_STRATEGY = "precomputed"
#: candidates ``"auto"`` measures (the prompt strategies; the runner adds ``"data"``)
AUTO_CANDIDATES = STRATEGIES


#: ``W_lookup = scale * table`` at init when ``lookup_init_scale`` is left ``None``, whatever the
#: table: the authors' final setting for their prompt tables (Dooms & Wilhelm, Sec. 3), and
#: for the data-estimated table too, where the full mean left the SAE firing fewer than k
#: latents and behind TopK at high k (docs: Results, "The lookup's init scale").
DEFAULT_INIT_SCALE = 0.5
