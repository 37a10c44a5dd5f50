"""One command that measures tiny_fastai on a GPU in a fixed budget (default 480 s, `--budget-s`), from the archive.

Steps, each with its own share of the budget (the plan adds up to `--budget-s`, printed at the start):
1. data: extract the archive, build the uint8 array cache with all cores (time printed; not capped, about 1 minute);
2. speed: training images/s of each preset at each stage size, fed from tensors already on the GPU (fused optimizer,
   bf16, channels-last, cuDNN autotuned), plus cuDNN deterministic, fastai's Adam step and the real loader alone
   (15 workers) at the sprint's sizes; the grid stops when its share (`--speed-s`) is spent;
3. sprint: `train_recipe('sprint')` on the full data and the official val set: top-1/top-5, plain and with TTA,
   wall time, one row per epoch; its epochs are the preset's unless they do not fit the time left, in which case they
   are scaled down in proportion (the report says which);
4. full: the `full` recipe itself, end to end (dense_wide, MixCut, EMA, torch.compile, flip TTA), `--full-epochs`
   epochs at each of its sizes: seconds per epoch as run (compile included), and the steady state (train batches after
   the first few, validation) that projects the whole recipe's hours; its errors are reported, not raised;
   projection: seconds per epoch of each stage of the `full` recipe (and of candidate full recipes) from step 2 and from
   the measured epochs, with their totals in hours;
5. compile: `torch.compile` against eager for the sprint's model at 64 px, only if at least `--compile-s` is left.

Figures go to OUT/gpu_bench.json and OUT/gpu_bench.md, rewritten (atomically) after every step and every epoch, so a
run that is cut short still leaves what it measured. The sprint's results.json and history.csv are copied to OUT.

Usage: python bench/gpu.py DATA --out OUT [--budget-s 480]
DATA: Tiny ImageNet as a .tar.gz/.zip archive or an extracted folder. On a CPU, `--quick` runs every step in seconds
on DATA (e.g. the bundled sample) with the tiny preset, for testing."""
import argparse, json, os, platform, shutil, sys, tempfile, time, traceback, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import cpu_model   # (and the checkout on the path)
T0 = time.time()
import torch, torch.nn.functional as F
from fastai.vision.all import *
from tiny_fastai.archive import get_tiny_imagenet
from tiny_fastai.loaders import tiny_dls, resize_dls
from tiny_fastai.models import get_arch, count_macs
from tiny_fastai.recipe import train_recipe
from tiny_fastai.plan import get_recipe, resolve_plan
from tiny_fastai.learner import get_opt, wd_splitter

warnings.filterwarnings('ignore')


def elapsed(): return time.time() - T0

def say(*a): print(f'[{elapsed():6.1f} s]', *a, flush=True)

# ------------------------------------------------------------------ the report
class Report:
    "The results so far, written to OUT/gpu_bench.json and .md after every update"
    def __init__(self, out, **info):
        self.out = Path(out); self.out.mkdir(parents=True, exist_ok=True)
        self.d = dict(info, status='running', steps={})
        self.write()

    def __call__(self, step, **kw):
        self.d['steps'].setdefault(step, {}).update(kw)
        self.write()

    def _atomic(self, name, text):
        tmp = self.out/f'.{name}.tmp'
        tmp.write_text(text); os.replace(tmp, self.out/name)

    def write(self):
        self.d['elapsed_s'] = round(elapsed(), 1)
        self._atomic('gpu_bench.json', json.dumps(self.d, indent=1, default=str) + '\n')
        self._atomic('gpu_bench.md', markdown(self.d))

def _f(v, fmt=',.0f'): return '-' if v is None else format(v, fmt)

def _table(rows, cols):
    s = ['| ' + ' | '.join(cols) + ' |', '|' + '---|'*len(cols)]
    return s + ['| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |' for r in rows]

def markdown(d) -> str:
    st = d['steps']
    s = [f"# GPU benchmark ({d['status']})", "", f"device: {d['device']}; CPU: {d['cpu']}; torch {d['torch']}; {d['date']}",
         f"command: `{d['command']}`", f"elapsed: {d.get('elapsed_s', 0):.0f} s; plan: {d.get('plan')}", ""]
    if 'data' in st:
        u = st['data']
        s += [f"## 1. data", "", f"extract/check {_f(u.get('extract_s'), '.1f')} s, array cache {_f(u.get('cache_s'), '.1f')} s "
              f"({u.get('decode_workers')} processes); {_f(u.get('n_train'))} train / {_f(u.get('n_valid'))} val images", ""]
    if 'speed' in st:
        g = st['speed']
        s += ["## 2. training images/s, fed from tensors on the GPU", "", g.get('setup', ''), ""]
        s += _table([dict(r, ips=_f(r.get('ips')), params=_f(r.get('params')), gmacs=_f(r.get('gmacs'), '.2f')) for r in g.get('rows', [])],
                    ['arch', 'size', 'bs', 'variant', 'params', 'gmacs', 'ips', 'step_ms', 'note']) + [""]
        if g.get('loader'):
            s += ["The real loader alone (uint8 cache, imgaug on CPU workers, to the GPU, resize + normalise there), "
                  "against the sprint model fed from tensors:", ""]
            s += _table([dict(r, ips=_f(r.get('ips')), model_ips=_f(r.get('model_ips')), ratio=_f(r.get('ratio'), '.2f'))
                         for r in g['loader']], ['size', 'bs', 'workers', 'ips', 'first_batch_s', 'model_ips', 'ratio']) + [""]
    if 'sprint' in st:
        c = st['sprint']
        s += ["## 3. the sprint preset, trained and scored on the official val set", "", f"plan: {c.get('plan')}", ""]
        if c.get('history'):
            cols = ['epoch', 'size', 'train_loss', 'valid_loss', 'top1', 'top5', 'time_s']
            s += _table([{k: (f'{v:.4f}' if isinstance(v, float) and k != 'time_s' else v) for k,v in r.items()} for r in c['history']], cols) + [""]
        if c.get('clock'): s += ["Per epoch (train images/s after the first 10 batches):", ""] + _table(c['clock'], ['size', 'epoch_s', 'first_batches_s', 'train_ips', 'valid_s']) + [""]
        if 'top1' in c:
            s += [f"**top-1 {c['top1']:.4f}**, top-5 {c['top5']:.4f}; with {c.get('tta')} TTA: top-1 {_f(c.get('top1_tta'), '.4f')}, "
                  f"top-5 {_f(c.get('top5_tta'), '.4f')}; {c.get('epochs')} epochs; wall time {_f(c.get('wall_s'))} s "
                  f"(training {_f(c.get('train_s'))} s)", ""]
    if 'full' in st:
        u = st['full']
        s += ["## 4a. the full recipe, end to end", "", f"plan: {u.get('plan')}; {_f(u.get('total_s'))} s in all", ""]
        if u.get('clock'): s += _table(u['clock'], ['size', 'epoch_s', 'first_batches_s', 'train_ips', 'valid_s']) + [""]
        if u.get('error'): s += [f"error: `{u['error']}`", ""]
        elif 'top1' in u: s += [f"top-1 {u['top1']:.4f} after these few epochs (a check that the recipe runs, not a result)", ""]
    if 'projection' in st:
        s += ["## 4. projected time of full recipes (from the speeds of step 2; training + validation)", ""]
        s += _table(st['projection'].get('rows', []), ['recipe', 'stages', 'epochs', 'hours', 'note']) + [""]
    if 'compile' in st:
        s += ["## 5. torch.compile", ""] + _table(st['compile'].get('rows', []), ['arch', 'size', 'bs', 'variant', 'ips', 'compile_s']) + [""]
    if d.get('error'): s += ["## error", "", "```", d['error'], "```", ""]
    return '\n'.join(s)

# ------------------------------------------------------------------ step 2: speed
def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

def make_step(model, dev, opt='sgd', compile=False):
    "A training step (forward, backward, optimizer) on `model` with bf16 autocast and channels-last on a GPU"
    gpu = dev.type == 'cuda'
    model = model.to(dev).train()
    if gpu: model = model.to(memory_format=torch.channels_last)
    opt = get_opt(opt, dev)(wd_splitter(model), lr=1e-3)
    fwd = torch.compile(model) if compile else model
    def step(x, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(fwd(x), y, label_smoothing=0.1)
        loss.backward(); opt.step(); opt.zero_grad()
    return step

def model_ips(arch, size, bs, dev, steps, warmup, opt='sgd', compile=False, n_out=200):
    "Training images/s of a fresh `arch` at `size` px, fed from one batch on `dev`; and seconds until the first step ended"
    t = time.perf_counter()
    step = make_step(get_arch(arch)(n_out=n_out), dev, opt, compile)
    x = torch.randn(bs, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_out, (bs,), device=dev)
    step(x, y); _sync(dev); first = time.perf_counter() - t
    for _ in range(warmup): step(x, y)
    _sync(dev); t = time.perf_counter()
    for _ in range(steps): step(x, y)
    _sync(dev); dt = time.perf_counter() - t
    return steps*bs/dt, 1000*dt/steps, first

def loader_ips(dls, size, batches, dev):
    "Images/s that the train loader of `dls` at `size` px delivers on the device (after its GPU-side batch transforms)"
    it = iter(resize_dls(dls, size).train)
    t,n,first = time.perf_counter(),0,None
    try:
        for i,(x,y) in enumerate(it):
            if i == 0: _sync(dev); first = time.perf_counter() - t; t = time.perf_counter()
            else: n += len(x)
            if i >= batches: break
        _sync(dev)
    finally: it.close()   # shut the workers down now, not in a process forked later
    return n/(time.perf_counter() - t), first

# ------------------------------------------------------------------ step 3: the sprint's epochs
def scale_epochs(epochs, cost, budget):
    "`epochs` (per stage) if their summed `cost` (s per epoch) fits `budget`, else scaled down in proportion (>= 1 each)"
    total = lambda k: sum(max(1, round(k*e))*c for e,c in zip(epochs, cost))
    if total(1) <= budget: return list(epochs)
    lo,hi = 0.,1.
    for _ in range(40):
        mid = (lo+hi)/2
        lo,hi = (mid,hi) if total(mid) <= budget else (lo,mid)
    return [max(1, round(lo*e)) for e in epochs]

class Progress(Callback):
    "Put every finished epoch into the report, and stop training (between epochs) once `deadline` has passed"
    order = 70
    def __init__(self, rep, deadline, step='sprint', clock=None): store_attr(); self.n = 0
    def before_train(self):
        if time.time() > self.deadline: self.rep(self.step, stopped='the time budget ran out'); raise CancelFitException()
    def after_epoch(self):
        h = self.learn.run_progress.history
        if len(h) == self.n: return
        self.n = len(h); say(f"{self.step} epoch {len(h)}: {h[-1]['size']} px, top-1 {h[-1]['top1']:.4f}, {h[-1]['time_s']:.1f} s")
        self.rep(self.step, history=list(h), train_s=round(sum(r['time_s'] for r in h), 1),
                 **({'clock': self.clock.rows} if self.clock else {}))

class Clock(Callback):
    "Per epoch: train images/s after the first `skip` batches (compiling and autotuning happen there), and validation s"
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
        ips = self.n/(self.t2 - self.t1) if self.t1 and self.n else None
        self.rows.append(dict(size=self.size,
                              epoch_s=round(self.t3 - self.t0, 2), train_ips=round(ips) if ips else None,
                              first_batches_s=round(self.t1 - self.t0, 2) if self.t1 else None, valid_s=round(self.t3 - self.t2, 2)))

def measured_hours(clock, stages, n_train):
    "Hours of `stages` [(size, epochs)] from `Clock` rows: the last epoch at each size (the steady state), plus what the first cost more"
    if not clock or any(not [r for r in clock if r['size'] == s] for s,_ in stages): return None
    tot,extra = 0.,0.
    for s,n in stages:
        rs = [r for r in clock if r['size'] == s]
        steady = rs[-1]['epoch_s'] if len(rs) > 1 else n_train/rs[-1]['train_ips'] + rs[-1]['valid_s'] if rs[-1]['train_ips'] else rs[-1]['epoch_s']
        tot += n*steady; extra += max(0., rs[0]['epoch_s'] - steady)
    return (tot + extra)/3600, f"steady epochs {tot/3600:.2f} h + first epochs at each size (compiling) {extra/60:.1f} min"

# ------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='archive or folder (default $TINY_IMAGENET)')
    p.add_argument('--out', default='runs/gpu_bench', help='folder for gpu_bench.json and gpu_bench.md')
    p.add_argument('--budget-s', type=float, default=480, help='the whole run, data preparation included, in seconds')
    p.add_argument('--speed-s', type=float, default=75, help='share of the budget for the speed grid (step 2)')
    p.add_argument('--compile-s', type=float, default=100, help='time that must be left for the torch.compile step (5)')
    p.add_argument('--full-epochs', type=int, default=2, help='epochs at each size of the full recipe in step 4 (0: skip it)')
    p.add_argument('--full-s', type=float, default=210, help='time after which the full recipe stops between epochs')
    p.add_argument('--eval-s', type=float, default=25, help='time kept for the sprint\'s final evaluation and export')
    p.add_argument('--workers', type=int, default=None, help='loader processes (default: the CPUs less one, up to 15)')
    p.add_argument('--work-dir', default=None, help='where the archive is extracted and the sprint runs (default: a temporary folder)')
    p.add_argument('--quick', action='store_true', help='a test on a CPU: tiny preset, few steps, small sizes')
    a = p.parse_args(argv)
    if a.data is None: p.error('give the Tiny ImageNet archive or folder (or set TINY_IMAGENET)')
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    gpu = dev.type == 'cuda'
    if gpu: torch.backends.cudnn.benchmark = True
    work = Path(a.work_dir or tempfile.mkdtemp(prefix='gpu_bench_'))
    workers = a.workers if a.workers is not None else max(1, min(15, (os.cpu_count() or 2) - 1))
    steps,warmup = (3,1) if a.quick else (20,5)
    r = get_recipe('sprint')
    if a.quick:
        r = resolve_plan('sprint', arch='tiny', bs=16, sizes=(16,32), epochs=(1,2), lrs=(0.1,0.1))   # a frozen Recipe: no update()
        torch.set_num_threads(1)   # a test on a shared CPU: PyTorch's spinning threads would fight the other processes
    devname = f"{torch.cuda.get_device_name(dev)} ({torch.cuda.get_device_properties(dev).total_memory/2**30:.0f} GiB)" if gpu else 'cpu (no GPU)'
    cmd = 'python ' + ' '.join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    plan = (f"data (uncapped), speed grid {a.speed_s:.0f} s, sprint until {a.budget_s - a.eval_s:.0f} s of the budget + "
            f"{a.eval_s:.0f} s evaluation, compile if {a.compile_s:.0f} s remain: {a.budget_s:.0f} s in all")
    rep = Report(a.out, device=devname, cpu=f"{cpu_model()}, {os.cpu_count()} cores", torch=torch.__version__,
                 python=platform.python_version(), command=cmd, date=time.strftime('%Y-%m-%d'), plan=plan)
    say(f"{devname}; plan: {plan}")
    try:
        # -------------------------------------------------------------- 1. data
        t = time.time(); src = Path(a.data)
        path = get_tiny_imagenet(src) if src.is_dir() else get_tiny_imagenet(src, dest=work/'data')
        ext_s,t = time.time()-t,time.time()
        dls = tiny_dls(path, size=r.sizes[0], bs=r.bs, num_workers=workers, device=dev, seed=0, cache=True,
                       decode_workers=os.cpu_count(), cache_dir=work/'cache')
        rep('data', path=str(path), extract_s=round(ext_s, 1), cache_s=round(time.time()-t, 1), n_train=len(dls.train_ds),
            n_valid=len(dls.valid_ds), decode_workers=os.cpu_count(), workers=workers)
        say(f"data ready: extract {ext_s:.1f} s, cache {time.time()-t:.1f} s")
        nc = len(dls.vocab)
        # -------------------------------------------------------------- 2. speed
        t_end = time.time() + a.speed_s
        grid = ([('tiny', 16, 16, 'sgd'), ('tiny', 32, 16, 'sgd')] if a.quick else
                [('dense', 32, 512, 'sgd'), ('dense', 48, 512, 'sgd'), ('dense', 64, 512, 'sgd'),
                 ('dense_wide', 32, 256, 'sgd'), ('dense_wide', 48, 256, 'sgd'), ('dense_wide', 64, 256, 'sgd'),
                 ('medium', 64, 256, 'adamw'), ('small', 64, 512, 'adamw'), ('medium', 128, 256, 'adamw'),
                 ('large', 32, 256, 'adamw'), ('large', 64, 256, 'adamw'), ('large', 128, 256, 'adamw'), ('large', 96, 256, 'adamw')])
        extra = [] if a.quick else [('dense', 64, 512, 'sgd', 'deterministic'), ('large', 64, 256, 'adamw', 'deterministic'),
                                    ('large', 64, 256, 'adam', "fastai's Adam")]
        rows,ips = [],{}
        rep('speed', setup=f"bf16 autocast, channels-last, fused optimizer (SGD Nesterov or AdamW as in the recipes), "
                           f"cuDNN autotuned unless 'deterministic'; {warmup} warm-up + {steps} timed steps", rows=rows)
        for arch,size,bs,opt,*variant in grid + extra:
            if time.time() > t_end: rows.append(dict(arch=arch, size=size, bs=bs, note='skipped: the speed share was spent')); continue
            v = variant[0] if variant else 'autotuned'
            det = v == 'deterministic'
            torch.backends.cudnn.deterministic,torch.backends.cudnn.benchmark = det,gpu and not det
            try:
                i,ms,first = model_ips(arch, size, bs, dev, steps, warmup, opt=opt, n_out=nc)
                row = dict(arch=arch, size=size, bs=bs, variant=f'{v}, {opt}', ips=round(i), step_ms=round(ms, 1), note=f'first step {first:.1f} s')
                if not variant: ips[(arch, size)] = i
            except torch.cuda.OutOfMemoryError: row = dict(arch=arch, size=size, bs=bs, variant=v, note='out of memory')
            m = get_arch(arch)(n_out=nc)
            row.update(params=sum(q.numel() for q in m.parameters()), gmacs=count_macs(m, size=size)/1e9)
            rows.append(row); rep('speed', rows=rows); say(f"speed: {row}")
            if gpu: torch.cuda.empty_cache()
        torch.backends.cudnn.deterministic,torch.backends.cudnn.benchmark = False,gpu
        lrows = []
        for s in r.sizes:   # the real loader alone, at the sprint's sizes
            i,first = loader_ips(dls, s, 6 if a.quick else 60, dev)
            m = ips.get((r.arch, s))
            lrows.append(dict(size=s, bs=r.bs, workers=workers, ips=round(i), first_batch_s=round(first, 2),
                              model_ips=round(m) if m else None, ratio=i/m if m else None))
            rep('speed', loader=lrows); say(f"loader: {lrows[-1]}")
        n_tr,n_va = len(dls.train_ds),len(dls.valid_ds)
        # -------------------------------------------------------------- 4a. the full recipe, end to end (measured before the sprint)
        fr = get_recipe('full')
        if a.full_epochs > 0:
            fsz = fr.sizes if not a.quick else (16, 32)
            fkw = dict(arch='tiny', bs=16, lrs=[0.1]*len(fsz), sizes=list(fsz)) if a.quick else {}
            rep('full', plan=f"{a.full_epochs} epoch(s) at each of {', '.join(f'{s} px' for s in fsz)}; preset "
                             f"{', '.join(f'{e} x {s} px' for s,e in zip(fr.sizes, fr.epochs))}")
            clock,t = Clock(3 if a.quick else 10),time.time()
            try:
                res = train_recipe('full', out=work/'full', data=path, epochs=[a.full_epochs]*len(fsz), num_workers=workers, restart=True, device=dev,
                                   cbs=[clock, Progress(rep, time.time() + a.full_s, 'full', clock)], dls_kwargs=dict(cache_dir=work/'cache'), **fkw)
                rep('full', top1=res.top1, top1_tta=res.top1_tta, wall_s=res.wall_s, compiled=gpu)
            except Exception as e:
                rep('full', error=f"{type(e).__name__}: {e}"[:2000]); say(f"full: failed: {e!r}")
            rep('full', clock=clock.rows, total_s=round(time.time() - t, 1)); say(f"full: {clock.rows}")
            if gpu: torch.cuda.empty_cache()
        # -------------------------------------------------------------- 3. sprint
        def cost(s):   # seconds per epoch: the slower of model and loader, validation at 3x, 1.5 s for workers and the checkpoint
            m = min(ips.get((r.arch, s), 1e9), *[x['ips'] for x in lrows if x['size'] == s] or [1e9])
            return 1.3*(n_tr/m + n_va/(3*m)) + 1.5   # 1.3: the Learner loop is slower than the bare step
        budget = T0 + a.budget_s - a.eval_s - time.time()
        epochs = scale_epochs(r.epochs, [cost(s) for s in r.sizes], budget)
        scaled = list(epochs) != list(r.epochs)
        plan_s = (f"{', '.join(f'{e} x {s} px' for s,e in zip(r.sizes, epochs))} ({'scaled down from the preset to fit' if scaled else 'the preset as it is'}; "
                  f"{budget:.0f} s left for training, estimated {sum(e*cost(s) for s,e in zip(r.sizes, epochs)):.0f} s)")
        rep('sprint', plan=plan_s, preset_epochs=list(r.epochs), epochs_run=epochs, scaled=scaled); say(f"sprint: {plan_s}")
        t,sclock = time.time(),Clock(3 if a.quick else 10)
        kw = dict(arch='tiny', bs=r.bs, lrs=list(r.lrs), sizes=list(r.sizes)) if a.quick else {}
        res = train_recipe('sprint', out=work/'sprint', data=path, epochs=epochs, num_workers=workers, restart=True, device=dev,
                           cbs=[sclock, Progress(rep, T0 + a.budget_s - a.eval_s, 'sprint', sclock)], dls_kwargs=dict(cache_dir=work/'cache'), **kw)
        keep = ('top1', 'top5', 'top1_tta', 'top5_tta', 'tta', 'epochs', 'train_s', 'wall_s', 'history', 'params', 'arch', 'bs', 'stages')
        rep('sprint', **{k: getattr(res, k) for k in keep})
        for f in ('results.json', 'history.csv'):
            if (work/'sprint'/f).exists(): shutil.copy(work/'sprint'/f, Path(a.out)/f'sprint_{f}')
        say(f"sprint: top-1 {res.top1:.4f}, with TTA {res.top1_tta}, {time.time()-t:.0f} s")
        # -------------------------------------------------------------- 4. projection
        def hours(arch, stages):
            if any((arch, s) not in ips for s,_ in stages): return None
            return sum(n*(n_tr/ips[(arch, s)] + n_va/(3*ips[(arch, s)]) + 1.5) for s,n in stages)/3600
        cands = [('full (as coded)', fr.arch, list(zip(fr.sizes, fr.epochs)))]
        if not a.quick: cands += [('large, 64 px mostly', 'large', [(32, 60), (64, 340)]),
                                  ('large, 96 px last', 'large', [(32, 50), (64, 150), (96, 200)]),
                                  ('dense_wide, 64 px', 'dense_wide', [(32, 60), (64, 340)]),
                                  ('medium, 128 px last', 'medium', [(64, 200), (128, 200)])]
        prow = []
        for name,arch,stages in cands:
            h = hours(arch, stages)
            prow.append(dict(recipe=name, stages=f"{arch}: " + ', '.join(f'{n} x {s} px' for s,n in stages),
                             epochs=sum(n for _,n in stages), hours=_f(h, '.2f'), note='' if h is not None else 'a size was not measured'))
        m = measured_hours(rep.d['steps'].get('full', {}).get('clock', []), list(zip(fr.sizes, fr.epochs)), n_tr)
        if m: prow.insert(0, dict(recipe='full, from its measured epochs', stages=f"{fr.arch}: " + ', '.join(f'{n} x {s} px' for s,n in zip(fr.sizes, fr.epochs)),
                                  epochs=sum(fr.epochs), hours=_f(m[0], '.2f'), note=m[1]))
        rep('projection', rows=prow)
        # -------------------------------------------------------------- 5. compile
        left = T0 + a.budget_s - time.time()
        if gpu and left >= a.compile_s:
            crow = []
            for comp in (False, True):
                t = time.time()
                i,_,first = model_ips(r.arch, 64, r.bs, dev, steps, warmup, opt=r.opt, compile=comp, n_out=nc)
                crow.append(dict(arch=r.arch, size=64, bs=r.bs, variant='compiled' if comp else 'eager', ips=round(i), compile_s=round(first, 1)))
                rep('compile', rows=crow); say(f"compile: {crow[-1]}")
        else: rep('compile', rows=[dict(arch=r.arch, variant=f'skipped: {left:.0f} s left' if gpu else 'skipped: no GPU')])
        rep.d['status'] = 'done'
    except BaseException:
        rep.d['status'] = 'failed'; rep.d['error'] = traceback.format_exc()[-4000:]
        raise
    finally:
        rep.write()
        print(markdown(rep.d), flush=True)
    return rep.d

if __name__ == '__main__':
    main(); sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)   # on an H200 (torch 2.11) a finished run did not exit within 70 s of its last report: don't wait for stray workers
