"""Loop adapters: record activation stats in Lightning, the Hugging Face `Trainer` and fastai.

Each module exports `StatsCallback`, a thin mapping of its loop's events onto one recorder
(`actwidget.recorder.StatsHooks`, as `cb.recorder`); `ActivationWidget(cb)` shows it live
and its Stop ends the fit the loop's own way at the next batch boundary.

```python
from actwidget.integrations.lightning import StatsCallback     # lightning.Callback
from actwidget.integrations.transformers import StatsCallback  # transformers.TrainerCallback
from actwidget.integrations.fastai import StatsCallback        # fastai Callback
```

Importing this package imports no framework: each one loads with its own module.
"""
