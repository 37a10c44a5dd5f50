"""Every fenced code block of README.md runs as written (issue 24): a reader who copies a block gets what it says.

- python blocks run in a fresh process, in an empty folder, on the bundled sample (matplotlib draws into files);
- shell blocks are split into their commands (lines, `\\` continuations, `&&`); each command runs in that folder, with
  this environment's `tiny-fastai` and `python` first on the PATH, unless `NOT_RUN` names it with the reason (installs,
  commands that rewrite this checkout, the test suite itself, hours on a GPU) or `NEEDS_FULL_DATA` names it (it runs
  where TINY_IMAGENET and a GPU are, with the placeholder `path/to/tiny-imagenet-200.tar.gz` replaced by TINY_IMAGENET);
  so a new command in the README runs by default;
- a block without a language right after a shell block is that block's output: each line it quotes is a line the
  commands printed (numbers aside: they change with the machine and the run).

On the 2-core development machine the test trains the demo (`tiny-fastai train`) and the interactive snippet once
each: about two minutes."""
import os, re, shlex, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT/'README.md'
PLACEHOLDER = 'path/to/tiny-imagenet-200.tar.gz'

# the start of a command (after `&&` splitting) -> why a test does not run it
NOT_RUN = {
    'git clone': 'clones the repository: the test runs in its checkout',
    'cd tiny_fastai': 'the folder of the clone above',
    'python3 -m venv': 'makes a virtual environment: the test runs in the one it was installed into',
    'source .venv/bin/activate': 'activates that environment',
    '. .venv/bin/activate': 'activates that environment',
    'pip install': 'installs the package from the network: the test runs the installed one',
    'nbdev-export': "rewrites tiny_fastai/ in this checkout: tests/test_notebooks.py runs it in a copy",
    'nbdev-clean': 'rewrites the notebooks of this checkout',
    'pytest': 'the test suite itself',
    'python tools/make_readme.py': 'rewrites README.md: tests/test_notebooks.py checks that README.md is what it writes',
    'tiny-fastai train --preset full': 'about 1.2 hours on an H200',
    'tiny-fastai evaluate runs/full': 'needs the model of the `full` run above',
    'tiny-fastai predict runs/full': 'needs the model of the `full` run above',
    'python bench/gpu.py': 'a GPU benchmark of minutes: tests/test_bench.py runs its --quick mode',
    'torchrun': 'several GPUs (or machines): tests/test_distrib.py runs the demo with torchrun on the CPU',
    'accelerate launch': 'several GPUs: the same command as torchrun, through Accelerate',
}
# commands that need the full data and a GPU: they run where both are
NEEDS_FULL_DATA = {
    'tiny-fastai train --preset sprint': 'the sprint preset: about 5 minutes on an H200',
}


def code_blocks(text):
    "The fenced blocks of a markdown `text`: (language, code, line number)"
    return [(m.group(1), m.group(2), text[:m.start()].count('\n') + 1)
            for m in re.finditer(r'^```(\w*)[^\n]*\n(.*?)^```', text, re.S | re.M)]

def commands(code):
    "The commands of a shell block: comments dropped, `\\` continuations joined, `&&` chains split"
    code = re.sub(r'\\\n\s*', ' ', code)
    lines = [re.sub(r'(^|\s)#.*$', '', l).strip() for l in code.splitlines()]
    return [c.strip() for l in lines if l for c in l.split('&&') if c.strip()]

def skip_reason(cmd):
    "Why `cmd` is not run here, or None"
    for k, why in NOT_RUN.items():
        if cmd == k or cmd.startswith(k + ' '): return why
    for k, why in NEEDS_FULL_DATA.items():
        if cmd == k or cmd.startswith(k + ' '):
            import torch
            if not os.environ.get('TINY_IMAGENET') or not torch.cuda.is_available():
                return f'{why}: needs TINY_IMAGENET and a GPU'
    return None

BLOCKS = code_blocks(README.read_text())


def _env(tmp):
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get('PATH', ''), MPLBACKEND='Agg',
                XDG_CACHE_HOME=str(tmp/'cache'), PYTHONUNBUFFERED='1')

def _run(args, tmp, **kw):
    p = subprocess.run(args, cwd=tmp, env=_env(tmp), capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"`{args if isinstance(args, str) else ' '.join(args)}` failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}"
    return p.stdout + p.stderr

def _norm(line):
    "A printed line with its numbers (and the machine's name) as placeholders"
    import platform
    return re.sub(r'\d[\d,.]*', 'N', line.replace(platform.machine(), 'MACHINE')).strip()


def test_readme_has_blocks():
    "The parser finds the README's blocks, and every entry of NOT_RUN still names a command of the README"
    assert {l for l, *_ in BLOCKS} >= {'sh', 'python', ''}
    cmds = [c for l, code, _ in BLOCKS if l == 'sh' for c in commands(code)]
    stale = [k for k in [*NOT_RUN, *NEEDS_FULL_DATA] if not any(c == k or c.startswith(k + ' ') for c in cmds)]
    assert not stale, f"NOT_RUN/NEEDS_FULL_DATA name commands that the README no longer has: {stale}"


@pytest.mark.parametrize('i', [i for i, (l, *_) in enumerate(BLOCKS) if l == 'sh'],
                         ids=lambda i: f'sh-line{BLOCKS[i][2]}')
def test_shell_block(i, tmp_path):
    lang, code, line = BLOCKS[i]
    cmds = commands(code)
    run = [c for c in cmds if skip_reason(c) is None]
    if not run: pytest.skip('; '.join(f'`{c}`: {skip_reason(c)}' for c in cmds))
    out = ''
    for c in run: out += _run(['bash', '-c', c.replace(PLACEHOLDER, os.environ.get('TINY_IMAGENET', PLACEHOLDER))], tmp_path)
    nxt = BLOCKS[i + 1] if i + 1 < len(BLOCKS) else None
    if nxt and nxt[0] == '':   # the output this block printed, as the README quotes it
        printed = {_norm(l) for l in out.splitlines()}
        missing = [l for l in nxt[1].splitlines() if l.strip() and _norm(l) not in printed]
        assert not missing, f"README line {nxt[2]} quotes lines that `{'; '.join(run)}` does not print:\n" + '\n'.join(missing) + \
                            f"\n\nit printed:\n{out[-3000:]}"


@pytest.mark.parametrize('i', [i for i, (l, *_) in enumerate(BLOCKS) if l == 'python'],
                         ids=lambda i: f'python-line{BLOCKS[i][2]}')
def test_python_block(i, tmp_path):
    lang, code, line = BLOCKS[i]
    if PLACEHOLDER in code:
        if not os.environ.get('TINY_IMAGENET'): pytest.skip('needs the full data: set TINY_IMAGENET')
        code = code.replace(PLACEHOLDER, os.environ['TINY_IMAGENET'])
    _run([sys.executable, '-c', code], tmp_path)
