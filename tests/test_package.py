"The package as a user meets it: importing any of its modules prints no warning."
import subprocess, sys
from pathlib import Path

MODULES = ('core', 'files', 'text', 'runtime', 'data', 'archive', 'augment', 'models', 'cache', 'loaders', 'distrib', 'plan', 'checkpoint', 'callbacks',
           'learner', 'fit', 'cam', 'evaluate', 'infer', 'recipe', 'app', 'cli')

def test_modules_listed():
    "MODULES is every module of the package (a new module is added here, so that the test below covers it)"
    pkg = Path(__file__).resolve().parents[1]/'tiny_fastai'
    assert {p.stem for p in pkg.glob('*.py') if not p.stem.startswith('_')} == set(MODULES)

def test_import_warns_nothing():
    "Every module imported in a fresh process with warnings as errors: no warning, nothing on stderr"
    mods = ', '.join(f'tiny_fastai.{m}' for m in MODULES)
    r = subprocess.run([sys.executable, '-W', 'error', '-c', f'import {mods}'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and not r.stderr, r.stderr[-2000:]
