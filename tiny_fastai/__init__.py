__version__ = "0.1.0"

import warnings as _warnings
with _warnings.catch_warnings():
    # fastai 2.8 decorates a few layers with `torch.jit.script` (deprecated since torch 2.10) and sets a pandas option
    # that pandas 3 deprecates, both at import: nothing a user of this package can act on, so they are silenced here,
    # where they arise, and nowhere else.
    _warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
    _warnings.filterwarnings('ignore', message=r".*'mode\.chained_assignment' option is deprecated")
    import fastai.vision.all, fastai.tabular.core
