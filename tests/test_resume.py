"""Resume after SIGKILL: `tiny-fastai train` is killed at three points (while writing a checkpoint, between two stages,
in the middle of an epoch), the same command is run again each time, and the run finishes with the planned epochs,
without retraining finished epochs, and with the same metrics as a run that was never interrupted."""
import json, os, signal, subprocess, sys, pytest
from pathlib import Path
from tiny_fastai.data import make_subset, sample_path
from tiny_fastai.recipe import train_recipe
from tiny_fastai.checkpoint import read_checkpoint

# Runs `tiny-fastai train ARGS` in this process after arranging for it to SIGKILL itself at the point MODE.
DRIVER = r'''
import io, os, signal, sys
import tiny_fastai.fit as T   # progressive_fit looks resize_dls up here; torch.save is torch's own
from tiny_fastai.checkpoint import CKPT_FORMAT
from fastai.learner import Learner
mode, args = sys.argv[1], sys.argv[2:]
def die(): os.kill(os.getpid(), signal.SIGKILL)
if mode == 'ckpt-write':        # half-way through writing the second checkpoint file
    real, n = T.torch.save, [0]
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get('format') == CKPT_FORMAT:
            n[0] += 1
            if n[0] == 2:
                buf = io.BytesIO(); real(obj, buf, *a, **k); data = buf.getvalue()
                f.write(data[:len(data)//2]); f.flush(); os.fsync(f.fileno()); die()
        return real(obj, f, *a, **k)
    T.torch.save = save
elif mode == 'between-stages':  # when the loaders of the next stage are being made
    real, n = T.resize_dls, [0]
    def resize(*a, **k):
        n[0] += 1
        if n[0] == 2: die()
        return real(*a, **k)
    T.resize_dls = resize
elif mode == 'mid-epoch':       # at the third training batch of the run's fourth epoch
    real = Learner.one_batch
    def one_batch(self, i, b):
        if self.training and len(self.run_progress.history) == 3 and i == 2: die()
        return real(self, i, b)
    Learner.one_batch = one_batch
from tiny_fastai.cli import main
sys.exit(main(['train'] + args))
'''

def run(mode, args, cwd):
    return subprocess.run([sys.executable, '-c', DRIVER, mode, *args], cwd=cwd, capture_output=True, text=True, timeout=600)

def test_sigkill_at_several_points_then_resume(tmp_path):
    data = make_subset(sample_path(), tmp_path/'data'/'tiny', n_classes=5, n_train=20, n_val=10)
    out = tmp_path/'run'
    # 5 epochs: 2 at 16px (lr from lr_find), 1 at 32px, 2 at 64px
    args = ['--data', str(data), '--out', str(out), '--sizes', '16,32,64', '--epochs', '2,1,2', '--lr', 'find,2e-3,1e-3',
            '--bs', '16', '--seed', '5', '--no-tta', '--sched', 'stages']
    ck = out/'models'/'ckpt.pth'
    done = lambda: len(read_checkpoint(ck)['history'])

    # 1. killed while writing the checkpoint of epoch 0 (the first checkpoint, written after lr_find, is complete)
    r = run('ckpt-write', args, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert 'lr_find suggests' in r.stdout
    assert list(ck.parent.glob('.ckpt.pth.*.tmp')), "the half-written temporary file is there"
    st = read_checkpoint(ck)                                  # ... but the checkpoint itself is the previous, complete one
    assert st['history'] == [] and st['meta']['lrs'][0] > 0
    lr0 = st['meta']['lrs'][0]

    # 2. resumed (lr_find is not run again), then killed when stage 2's loaders are made
    r = run('between-stages', args, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert 'resuming from' in r.stdout and 'lr_find suggests' not in r.stdout
    assert not list(ck.parent.glob('.ckpt.pth.*.tmp')), "stale temporary files are removed"
    assert done() == 2

    # 3. resumed, then killed in the middle of the fourth epoch
    r = run('mid-epoch', args, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert done() == 3
    assert not (out/'results.json').exists()

    # 4. the same command finishes the run
    r = run('none', args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out/'results.json').read_text())
    assert sum(n for _, n, _ in res['recipe']['stages']) == 5 and len(res['history']) == 5
    assert [h['epoch'] for h in res['history']] == [0, 1, 2, 3, 4]
    assert [(h['stage'], h['size'], h['stage_epoch']) for h in res['history']] == [(0,16,0), (0,16,1), (1,32,0), (2,64,0), (2,64,1)]
    assert [h['run'] for h in res['history']] == [2, 2, 3, 4, 4]    # which invocation trained each epoch: none twice
    assert res['recipe']['stages'][0][2] == lr0 and res['runs'] == 4
    assert (out/'history.csv').read_text().count('\n') == 6 and (out/'model.pkl').exists()

    # 5. the interrupted run's metrics equal those of a run that was never interrupted
    ref = train_recipe('demo', out=tmp_path/'ref', data=data, sizes=[16,32,64], epochs=[2,1,2], lrs=[None,2e-3,1e-3], sched='stages',
                       bs=16, seed=5, tta=False)
    keys = ('train_loss', 'valid_loss', 'top1', 'top5')
    assert ref.stages[0]['lr'] == pytest.approx(lr0)
    for h, g in zip(res['history'], ref.history):
        for k in keys: assert h[k] == pytest.approx(g[k], abs=1e-5), (h['epoch'], k)
    assert res['top1'] == pytest.approx(ref.top1, abs=1e-6)
