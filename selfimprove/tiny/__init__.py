"""The embedded tiny world: a 1M-parameter model built and warm-started on CPU, and synthetic tasks.

No model or dataset can be downloaded on the build machines, so the quickstart, the tests and the
CPU figures use this world: `model.py` builds the tiny Llama (`tiny`), `variants.py` its warm-started
variants (`tiny-correct`, `tiny-translate`), `arith.py` and `translate.py` are the synthetic tasks
(`data.train: arith | translate`). The library finds them by name (`hub.NAMED_MODELS`,
`data.TASKS`) and never imports this package itself: real models and datasets need none of it.
"""
