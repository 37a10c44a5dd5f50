"""How fast each model and the loader run on this GPU, and how long the `full` recipe takes: one command, from the archive.

Steps (each reported as it ends):
1. data: extract the archive and build the uint8 array cache with all cores (timed, not capped);
2. speed: training images/s of each preset at each size, fed from one batch already on the GPU (`common.train_step`:
   bf16, channels-last, the recipes' fused optimizer, cuDNN autotuned), plus cuDNN deterministic and fastai's Adam,
   and the real loader alone at the `full` recipe's sizes; the grid stops when its share (`--speed-s`) is spent;
3. full: the `full` recipe itself through `train_recipe` (dense_wide, MixCut, EMA, torch.compile, flip TTA),
   `--full-epochs` epochs at each of its sizes, stopped between epochs after `--full-s`: seconds per epoch as run
   (compiling included), and the hours of its 400 epochs projected from them (the last epoch at each size is the
   steady state; what the first cost more is added once);
4. compile: `torch.compile` against eager for `dense` at 64 px.

The sprint in a time budget, the project's headline, is `bench/headline.py`'s. Figures go to OUT/gpu_bench.json and
OUT/gpu_bench.md (`common.Report`), rewritten after every row.

Usage: python bench/gpu.py DATA --out OUT
DATA: Tiny ImageNet as a .tar.gz/.zip archive or an extracted folder. `--quick` runs every step in seconds on 5 classes of DATA
(e.g. the bundled sample) with the `tiny` model at 16 and 32 px, one epoch each, on the CPU, for a test: fixed steps
and epochs, no time limits."""
import argparse, os, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import Report, command, race, subset, train_step, QUICK_SUBSET   # the shared harness (and the checkout on the path)
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import find_bs
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.loaders import tiny_dls, resize_dls
from tiny_fastai.models import get_arch, count_macs
from tiny_fastai.plan import get_recipe
from tiny_fastai.recipe import train_recipe

warnings.filterwarnings('ignore')
DATA, SPEED, LOADER, FULL, COMPILE = ('1. data', '2. training images/s, fed from tensors on the device',
                                      '2b. the real loader alone', '3. the full recipe, end to end', '4. torch.compile')
GRID = [('dense', 32, 512, 'sgd'), ('dense', 48, 512, 'sgd'), ('dense', 64, 512, 'sgd'),
        ('dense_wide', 32, 256, 'sgd'), ('dense_wide', 48, 256, 'sgd'), ('dense_wide', 64, 256, 'sgd'),
        ('sep_fused_s', 64, 512, 'sgd'), ('small', 64, 512, 'adamw'), ('medium', 64, 256, 'adamw'), ('large', 64, 256, 'adamw'),
        ('dense', 64, 512, 'sgd', 'deterministic'), ('large', 64, 256, 'adamw', 'deterministic'), ('large', 64, 256, 'adam', "fastai's Adam")]
QUICK_GRID = [('tiny', 16, 16, 'sgd'), ('tiny', 32, 16, 'sgd'), ('tiny', 16, 16, 'adam', "fastai's Adam")]


def step_ips(arch, size, bs, dev, steps, warmup, opt='sgd', compile=False, n_out=200) -> dict:
    "Training images/s of a fresh `arch` at `size` px (one batch on `dev`), and the seconds its first step took (compiling, autotuning)"
    t = time.perf_counter()
    step = train_step(get_arch(arch)(n_out=n_out), bs, size, dev, opt=opt, compile=compile, n_out=n_out)
    step(); first = time.perf_counter() - t
    sec = race({arch: step}, steps, warmup, dev)[arch]
    return dict(ips=round(bs/sec), step_ms=round(1e3*sec, 1), first_step_s=round(first, 1))

def loader_ips(dls, size, batches, dev) -> dict:
    "Images/s that the train loader of `dls` at `size` px delivers on the device (after its batch transforms), and its first batch's seconds"
    it = iter(resize_dls(dls, size).train)
    t,n,first = time.perf_counter(),0,None
    try:
        for i,(x,y) in enumerate(it):
            if dev.type == 'cuda': torch.cuda.synchronize(dev)
            if i == 0: first = time.perf_counter() - t; t = time.perf_counter()
            else: n += len(x)
            if i >= batches: break
    finally: it.close()   # shut the workers down now, not in a process forked later
    return dict(ips=round(n/(time.perf_counter() - t)), first_batch_s=round(first, 2))

class Clock(Callback):
    "Per epoch: train images/s after the first `skip` batches (compiling and autotuning happen there), and validation seconds"
    order = 65
    def __init__(self, skip=10): self.skip,self.rows = skip,[]
    def _t(self):
        if self.dls.device is not None and torch.device(self.dls.device).type == 'cuda': torch.cuda.synchronize()
        return time.perf_counter()
    def before_epoch(self): self.t0,self.t1,self.n = self._t(),None,0
    def after_batch(self):
        if not self.training: return
        self.size = self.x.shape[-1]
        if self.iter == self.skip - 1: self.t1 = self._t()
        elif self.iter >= self.skip: self.n += find_bs(self.yb)
    def before_validate(self): self.t2 = self._t()
    def after_validate(self): self.t3 = self._t()
    def after_epoch(self):
        if self.t1 is None: return   # no training batches past `skip` (e.g. `get_preds`)
        ips = self.n/(self.t2 - self.t1) if self.n else None
        self.rows.append(dict(size=self.size, epoch_s=round(self.t3 - self.t0, 2), train_ips=round(ips) if ips else None,
                              first_batches_s=round(self.t1 - self.t0, 2), valid_s=round(self.t3 - self.t2, 2)))

class StopAfter(Callback):
    "Stop training between epochs once `deadline` (time.time()) has passed"
    order = 70
    def __init__(self, deadline): self.deadline = deadline
    def before_epoch(self):
        if time.time() > self.deadline: raise CancelFitException()

def projected_hours(history, stages) -> tuple:
    "Hours of `stages` [(size, epochs)] from the epochs of `history` as run: the last at each size is the steady state, what the first cost more is paid once"
    steady,extra = 0.,0.
    for s,n in stages:
        ts = [h['time_s'] for h in history if h['size'] == s]
        if not ts: return None, f'no epoch ran at {s} px'
        steady += n*ts[-1]; extra += ts[0] - ts[-1]
    return round((steady + extra)/3600, 2), f'steady epochs {steady/3600:.2f} h + first epochs at each size (compiling) {extra/60:.1f} min'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='archive or folder (default $TINY_IMAGENET)')
    p.add_argument('--out', default='runs/gpu_bench', help='folder for gpu_bench.json and gpu_bench.md')
    p.add_argument('--speed-s', type=float, default=90, help='seconds for the speed grid (step 2)')
    p.add_argument('--full-epochs', type=int, default=2, help='epochs at each size of the full recipe in step 3 (0: skip it)')
    p.add_argument('--full-s', type=float, default=240, help='seconds after which the full recipe stops between epochs')
    p.add_argument('--workers', type=int, default=None, help='loader processes (default: the CPUs less one, up to 15)')
    p.add_argument('--work-dir', default=None, help='where the archive is extracted and the runs go (default: a temporary folder)')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: the tiny model at 16/32 px, few steps, no time limits')
    a = p.parse_args(argv)
    if a.data is None: p.error('give the Tiny ImageNet archive or folder (or set TINY_IMAGENET)')
    dev = torch.device('cuda' if torch.cuda.is_available() and not a.quick else 'cpu')
    gpu = dev.type == 'cuda'
    if gpu: torch.backends.cudnn.benchmark = True
    else: torch.set_num_threads(1)   # a shared CPU: PyTorch's spinning threads would fight the other processes
    if a.quick: a.speed_s,a.full_s,a.full_epochs = float('inf'),float('inf'),1   # a test counts steps, not seconds
    work = Path(a.work_dir or tempfile.mkdtemp(prefix='gpu_bench_'))
    workers = a.workers if a.workers is not None else max(1, min(15, (os.cpu_count() or 2) - 1))
    steps,warmup = (3,1) if a.quick else (20,5)
    fr = get_recipe('full')
    sizes = (16, 32) if a.quick else fr.sizes
    devname = f"{torch.cuda.get_device_name(dev)} ({torch.cuda.get_device_properties(dev).total_memory/2**30:.0f} GiB)" if gpu else 'cpu'
    rep = Report(a.out, 'gpu_bench', title='GPU benchmark: speeds and the full recipe', device=devname, torch=torch.__version__,
                 command=command(__file__, argv))
    try:
        # 1. data
        t = time.time(); src = Path(a.data)
        if a.quick: path = subset(src, dest=work/'data', tmp=work, **QUICK_SUBSET)   # 100 train / 50 val images
        else: path = get_tiny_imagenet(src) if src.is_dir() else get_tiny_imagenet(src, dest=work/'data')
        ext_s,t = time.time()-t,time.time()
        dls = tiny_dls(path, size=sizes[0], bs=16 if a.quick else fr.bs, num_workers=0 if a.quick else workers, device=dev, seed=0,
                       cache=True, decode_workers=os.cpu_count(), cache_dir=work/'cache')
        nc = len(dls.vocab)
        rep.add(DATA, dict(extract_s=round(ext_s, 1), cache_s=round(time.time()-t, 1), n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
                           decode_workers=os.cpu_count(), loader_workers=workers))
        # 2. speed, and the loader alone
        t_end = time.time() + a.speed_s
        for arch,size,bs,opt,*variant in (QUICK_GRID if a.quick else GRID):
            row = dict(arch=arch, size=size, bs=bs, variant=', '.join(['autotuned' if not variant or variant[0] != 'deterministic' else 'deterministic', opt]))
            if time.time() > t_end: rep.add(SPEED, dict(row, note='skipped: the speed share was spent')); continue
            torch.backends.cudnn.deterministic = variant == ['deterministic']
            torch.backends.cudnn.benchmark = gpu and variant != ['deterministic']
            m = get_arch(arch)(n_out=nc)
            row.update(params=sum(q.numel() for q in m.parameters()), gmacs=round(count_macs(m, size=size)/1e9, 3))
            try: row.update(step_ips(arch, size, bs, dev, steps, warmup, opt=opt, n_out=nc))
            except torch.cuda.OutOfMemoryError: row['note'] = 'out of memory'
            rep.add(SPEED, row)
            if gpu: torch.cuda.empty_cache()
        torch.backends.cudnn.deterministic,torch.backends.cudnn.benchmark = False,gpu
        for s in sizes: rep.add(LOADER, dict(size=s, bs=dls.bs, workers=workers, **loader_ips(dls, s, 6 if a.quick else 60, dev)))
        # 3. the full recipe, end to end
        if a.full_epochs > 0:
            kw = dict(arch='tiny', bs=16, sizes=list(sizes), lrs=[0.1]*len(sizes), num_workers=0) if a.quick else dict(num_workers=workers)
            t,clock = time.time(),Clock(3 if a.quick else 10)
            try:
                res = train_recipe('full', out=work/'full', data=path, epochs=[a.full_epochs]*len(sizes), restart=True, device=dev,
                                   cbs=[clock, StopAfter(time.time() + a.full_s)], cache_dir=work/'cache', **kw)
                for h,c in zip(res.history, clock.rows):
                    rep.add(FULL, dict(epoch=h['epoch'] + 1, size=h['size'], time_s=h['time_s'], top1=h.get('top1'),
                                       train_ips_after_first_batches=c['train_ips'], valid_s=c['valid_s']))
                plan = list(zip(sizes, fr.epochs))   # --quick: the preset's epochs at the test's sizes
                hours,how = projected_hours(res.history, plan)
                rep.head.update(full_top1=res.top1, full_top1_tta=res.top1_tta, full_s=round(time.time() - t, 1),
                                full_projected_hours=hours, full_projection=f"{', '.join(f'{n} x {s} px' for s,n in plan)}: {how}")
            except Exception as e: rep.head['full_error'] = f"{type(e).__name__}: {e}"[:2000]
            if gpu: torch.cuda.empty_cache()
        # 4. compile
        arch,size,bs = ('tiny', 16, 16) if a.quick else ('dense', 64, 512)
        for comp in (False, True) if gpu else (False,):
            rep.add(COMPILE, dict(arch=arch, size=size, bs=bs, variant='compiled' if comp else 'eager', **step_ips(arch, size, bs, dev, steps, warmup, compile=comp, n_out=nc)))
        if not gpu: rep.add(COMPILE, dict(arch=arch, variant='compiled: skipped, no GPU'))
        rep.done()
    except BaseException as e:
        rep.done('failed', error=f"{type(e).__name__}: {e}"[-4000:])
        raise
    finally: print(rep.markdown(), flush=True)
    return rep

if __name__ == '__main__':
    main(); sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)   # on an H200 (torch 2.11) a finished run did not exit within 70 s of its last report: don't wait for stray workers
