"Fixtures shared by the test modules."
import os, shutil
from pathlib import Path
import pytest
from tiny_fastai.data import get_tiny_imagenet, sample_path


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
