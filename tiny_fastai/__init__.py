"""tiny_fastai: train an image classifier from scratch on Tiny ImageNet with fastai.

Importing the package imports nothing heavy (`tiny-fastai --help` needs no fastai); each module imports fastai through
`tiny_fastai.core`, which silences the warnings fastai raises at import that a user cannot act on."""
__version__ = "0.1.0"
