"The package as a user meets it: importing it prints no warning."
import subprocess, sys

def test_import_warns_nothing():
    mods = 'tiny_fastai.data, tiny_fastai.augment, tiny_fastai.loaders, tiny_fastai.models, tiny_fastai.distrib, tiny_fastai.cli'
    r = subprocess.run([sys.executable, '-W', 'error', '-c', f'import {mods}'], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr[-2000:]
