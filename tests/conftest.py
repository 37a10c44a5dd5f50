"""Fixtures and helpers shared by the test modules (import the helpers with `from conftest import ...`: pytest puts
tests/ on the path)."""
import contextlib, io, os, shutil, sys
from pathlib import Path
import pytest
from fastai.callback.core import Callback
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.data import sample_path, make_subset


@pytest.fixture(scope='session')
def full_path(tmp_path_factory):
    "The full Tiny ImageNet named by TINY_IMAGENET (an archive, extracted once per session, or a folder)"
    src = os.environ.get('TINY_IMAGENET')
    if not src: pytest.skip('set TINY_IMAGENET to the Tiny ImageNet archive or folder to run the full-dataset tests')
    if Path(src).is_dir(): return get_tiny_imagenet(src)
    return get_tiny_imagenet(src, dest=tmp_path_factory.mktemp('full'))


@pytest.fixture
def copy(tmp_path):
    "A writable copy of the bundled sample"
    dst = tmp_path/'tiny-imagenet-200'
    shutil.copytree(sample_path(), dst)
    return dst


class StopAfterEpoch(Callback):
    "Interrupt the run after the checkpoint of epoch `at` was written (as a kill would, but in this process)"
    order = 90
    def __init__(self, at): self.at = at
    def after_epoch(self):
        if len(self.learn.run_progress.history) == self.at: raise KeyboardInterrupt

class SignalAt(Callback):
    "Send this process `sig` at the first batch of epoch `at` (of the current fit)"
    def __init__(self, sig, at): self.sig,self.at = sig,at
    def before_batch(self):
        if self.training and self.epoch == self.at and self.iter == 0: os.kill(os.getpid(), self.sig)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A 5-class slice of the bundled sample, 20 train and 10 val images per class (one per test module)"
    return make_subset(sample_path(), tmp_path_factory.mktemp('data')/'tiny', n_classes=5, n_train=20, n_val=10)


def venv_bin(name) -> str:
    "The console script `name` (tiny-fastai, torchrun, nbdev-test...) of the environment of this Python"
    return str(Path(sys.executable).parent/name)

def run_main(*args):
    "The CLI's `main(args)` in this process: (exit code, stdout, stderr)"
    from tiny_fastai.cli import main
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try: code = main([str(a) for a in args])
        except SystemExit as x: code = x.code
    return code, o.getvalue(), e.getvalue()
