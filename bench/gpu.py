"""GPU benchmark of the fast data path and the full recipe, for one GPU (an H100) with the full Tiny ImageNet.

(a) training images/second at 64 px (forward + backward + optimizer step, the full recipe's model, mixed precision,
    channels-last) fed by the real fast loader, against the same model fed from a batch already on the GPU: the loader
    keeps up when it reaches at least 90% of the second;
(b) the largest batch size that fits (`find_max_bs`) at 64 px and at the last stage's size;
(c) the full recipe's model trained with its progressive stages (sizes, learning rates, mix, label smoothing, weight
    decay of `RECIPES['full']`) for a fixed wall-clock budget (`--budget-s`, default 480 s): the epochs of each stage are
    the recipe's, scaled down so that the stages fit the budget, using the speeds measured in (a); then top-1/top-5
    on the official val set, plain and with TTA.
The figures go to OUT/gpu_bench.json and OUT/gpu_bench.md, rewritten (atomically) after every step and every epoch,
so a run that is cut short still leaves what it measured.

Usage: python bench/gpu.py DATA --out OUT [--budget-s 480] [--deadline-s S] [--workers N] [--cache-dir DIR] ...
DATA: Tiny ImageNet as a .tar.gz/.zip archive (extracted to --data-dest) or an extracted folder.
On a machine without fastai/imgaug (the GPU machine): `shared/device/get-wheels .whl` here, then there
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu.py ...`.
With a 10-minute limit per command, give `--deadline-s` (e.g. 570): (c) then shrinks its budget so that the whole
script, setup included, ends in time. It runs on a CPU too (for testing: `--budget-s 60 --arch tiny --threads 1` on the
bundled sample or a `make_subset`), where (b) returns the default batch size and says so."""
import argparse, json, os, platform, sys, tempfile, time, warnings
from types import SimpleNamespace
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
T0 = time.time()
import torch, torch.nn.functional as F
from fastai.vision.all import *
from tiny_fastai.data import get_tiny_imagenet, resize_dls, sample_path
from tiny_fastai.fast import fast_dls, find_max_bs
from tiny_fastai.train import tiny_learner, progressive_fit, evaluate, get_recipe

warnings.filterwarnings('ignore')

def cpu_model():
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown'

class Report:
    "The results so far, written to OUT/gpu_bench.json and .md after every update"
    def __init__(self, out, **info):
        self.out = Path(out); self.out.mkdir(parents=True, exist_ok=True)
        self.d = dict(info, status='running', steps={})
        self.write()

    def __call__(self, step, **kw):
        self.d['steps'].setdefault(step, {}).update(kw)
        self.d['elapsed_s'] = round(time.time()-T0, 1)
        self.write()

    def _atomic(self, name, text):
        tmp = self.out/f'.{name}.tmp'
        tmp.write_text(text); os.replace(tmp, self.out/name)

    def write(self):
        self._atomic('gpu_bench.json', json.dumps(self.d, indent=1, default=str) + '\n')
        self._atomic('gpu_bench.md', markdown(self.d))

def _f(v, fmt=',.0f'): return '-' if v is None else format(v, fmt)

def markdown(d) -> str:
    s,st = [f"# GPU benchmark ({d['status']})", "", f"device: {d['device']}; CPU: {d['cpu']}; torch {d['torch']}",
            f"command: `{d['command']}`", f"elapsed: {d.get('elapsed_s', 0):.0f} s", ""],d['steps']
    if 'setup' in st:
        u = st['setup']
        s += [f"setup: data at {u.get('path')} ({_f(u.get('extract_s'), '.0f')} s to extract/check), array cache "
              f"{_f(u.get('cache_s'), '.0f')} s, {_f(u.get('n_train'))} train / {_f(u.get('n_valid'))} val images, "
              f"{u.get('workers')} loader workers", ""]
    if 'throughput' in st:
        a = st['throughput']
        s += ["## (a) training throughput at 64 px", "",
              f"model {a.get('arch')} ({_f(a.get('params'))} params), bs {a.get('bs')}, {a.get('precision')}, channels-last, AdamW", "",
              "| fed from | images/s |", "|---|---|",
              f"| a batch already on the GPU | {_f(a.get('tensor_ips'))} |",
              f"| the fast loader, steady state (after {a.get('skip')} batches) | {_f(a.get('loader_ips'))} |",
              f"| the fast loader, whole epoch (worker start included) | {_f(a.get('epoch_ips'))} |",
              f"| the fast loader alone, no training | {_f(a.get('loader_only_ips'))} |", ""]
        if a.get('ratio') is not None:
            s += [f"loader / tensor: {a['ratio']:.3f} -> {'keeps up (>= 0.9)' if a['ratio'] >= 0.9 else 'does NOT keep up (< 0.9)'}", ""]
    if 'max_bs' in st:
        s += ["## (b) largest batch size", "", "| size | batch size |", "|---|---|"]
        s += [f"| {k} | {v} |" for k,v in st['max_bs'].items() if k != 'note'] + [""]
        if st['max_bs'].get('note'): s += [st['max_bs']['note'], ""]
    if 'train' in st:
        c = st['train']
        s += [f"## (c) the full recipe for a budget of {_f(c.get('budget_s'))} s", "",
              f"plan: {c.get('plan')} (recipe: {c.get('recipe_plan')}), bs {c.get('bs')}, model {c.get('arch')}", ""]
        if c.get('history'):
            cols = ['epoch', 'size', 'train_loss', 'valid_loss', 'top1', 'top5', 'time_s']
            s += ['| ' + ' | '.join(cols) + ' |', '|' + '---|'*len(cols)]
            for r in c['history']:
                s.append('| ' + ' | '.join(f'{r.get(k):.4f}' if isinstance(r.get(k), float) and k != 'time_s' else str(r.get(k)) for k in cols) + ' |')
            s.append("")
        if 'top1' in c:
            s += [f"**top-1 on the official val set: {c['top1']:.4f}** (top-5 {c['top5']:.4f}; with {c.get('tta_n')}-pass TTA: "
                  f"top-1 {_f(c.get('top1_tta'), '.4f')}, top-5 {_f(c.get('top5_tta'), '.4f')}), after {c.get('train_s', 0):.0f} s of "
                  f"training, {c.get('epochs_done')} epochs", ""]
    if d.get('error'): s += ["## error", "", "```", d['error'], "```", ""]
    return '\n'.join(s)

# ------------------------------------------------------------------ (a) throughput
def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

def make_step(learn, dev):
    "A training step (forward, backward, AdamW) on `learn.model`, with bf16/fp16 autocast and channels-last on a GPU"
    model = learn.model.to(dev).train()
    cl = dev.type == 'cuda'
    if cl: model = model.to(memory_format=torch.channels_last)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if dev.type == 'cuda' else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, **(dict(fused=True) if dev.type == 'cuda' else {}))
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    def step(x, y):
        if cl: x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        return loss
    return step, ('bf16' if dtype == torch.bfloat16 else 'fp16' if dtype == torch.float16 else 'fp32')

def throughput(dls, learn, dev, steps, warmup, skip):
    "Images/s of training steps fed from one batch on the device, and fed by the loader (steady state and whole epoch)"
    step,prec = make_step(learn, dev)
    dl = dls.train
    xb,yb = dl.one_batch()
    xb,yb = TensorBase(xb).as_subclass(torch.Tensor).to(dev).clone(),TensorBase(yb).as_subclass(torch.Tensor).to(dev).clone()
    for _ in range(warmup): step(xb, yb)
    _sync(dev); t = time.perf_counter()
    for _ in range(steps): step(xb, yb)
    _sync(dev); tensor_ips = steps*len(xb)/(time.perf_counter()-t)
    # the loader alone: how fast can it serve (no training)?
    n,t = 0,time.perf_counter()
    for i,(x,y) in enumerate(dl):
        if i == skip: n,t = 0,time.perf_counter()
        n += len(x)
        if i >= skip+steps: break
    _sync(dev); loader_only = n/(time.perf_counter()-t)
    # training fed by the loader: one whole epoch, timing the steady state after `skip` batches too
    n,t_ep,ns,ts = 0,time.perf_counter(),0,None
    for i,(x,y) in enumerate(dl):
        if i == skip: _sync(dev); ns,ts = 0,time.perf_counter()
        step(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor))
        n += len(x); ns += len(x)
    _sync(dev); t1 = time.perf_counter()
    epoch_ips = n/(t1-t_ep)
    loader_ips = ns/(t1-ts) if ts is not None else epoch_ips
    return dict(tensor_ips=tensor_ips, loader_ips=loader_ips, epoch_ips=epoch_ips, loader_only_ips=loader_only,
                ratio=loader_ips/tensor_ips, precision=prec, bs=len(xb))

def model_ips(arch, n_out, dev, size, bs, steps=None, warmup=None):
    "Training images/s of a fresh model `arch` at `size` px fed from the device (for planning the budget)"
    from tiny_fastai.models import get_arch
    gpu = dev.type == 'cuda'
    steps,warmup = ifnone(steps, 8 if gpu else 1),ifnone(warmup, 3 if gpu else 1)
    step,_ = make_step(SimpleNamespace(model=get_arch(arch)(n_out=n_out)), dev)
    x,y = torch.randn(bs, 3, size, size, device=dev),torch.randint(0, n_out, (bs,), device=dev)
    for _ in range(warmup): step(x, y)
    _sync(dev); t = time.perf_counter()
    for _ in range(steps): step(x, y)
    _sync(dev); return steps*bs/(time.perf_counter()-t)

# ------------------------------------------------------------------ (c) budget
def plan_epochs(epochs, cost, budget):
    "Epochs per stage, proportional to the recipe's `epochs`, at least 1 each, whose summed `cost` (s/epoch) fits `budget`"
    n = len(epochs)
    while n > 1 and sum(cost[:n]) > budget: n -= 1      # not even one epoch of every stage: drop the last stages
    epochs,cost = epochs[:n],cost[:n]
    total = lambda k: sum(max(1, int(k*e)) * c for e,c in zip(epochs, cost))
    lo,hi = 0.0,1.0
    while total(hi) <= budget and hi < 1e6: lo,hi = hi,hi*2
    for _ in range(50):
        mid = (lo+hi)/2
        if total(mid) <= budget: lo = mid
        else: hi = mid
    return [max(1, int(lo*e)) for e in epochs]

class BudgetGuard(Callback):
    "Record every epoch in the report, and stop training (between epochs) once the deadline has passed"
    order = 70   # after MixHandler's before_train (which its after_cancel_fit needs)
    def __init__(self, report, deadline, info): self.report,self.deadline,self.info = report,deadline,info
    def before_train(self):
        if time.time() > self.deadline:
            self.info['stopped'] = 'the wall-clock budget ran out'
            raise CancelFitException()
    def after_epoch(self):
        ck = getattr(self.learn, 'checkpoint', None)
        self.report('train', history=list(ck.history) if ck is not None else [], epochs_done=len(ck.history) if ck else None,
                    train_s=round(time.time()-self.info['t0'], 1), **{k:v for k,v in self.info.items() if k != 't0'})

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='archive or folder (default $TINY_IMAGENET)')
    p.add_argument('--out', default='runs/gpu_bench', help='folder for gpu_bench.json and gpu_bench.md')
    p.add_argument('--budget-s', type=float, default=480, help='wall-clock training budget of (c), in seconds')
    p.add_argument('--deadline-s', type=float, default=None, help='stop (c) early enough that the whole script ends within this many seconds of its start')
    p.add_argument('--arch', default=None, help="model preset (default: the full recipe's)")
    p.add_argument('--bs', type=int, default=None, help="batch size of (a) and (c) (default: the full recipe's)")
    p.add_argument('--workers', type=int, default=None, help='loader processes (default: the number of CPUs, up to 16)')
    p.add_argument('--cache-dir', default=None, help='where the fast path keeps its arrays (default: next to the data)')
    p.add_argument('--data-dest', default=None, help='where an archive is extracted (default: a temporary folder)')
    p.add_argument('--steps', type=int, default=60, help='timed training steps of (a)')
    p.add_argument('--warmup', type=int, default=15, help='untimed steps before timing')
    p.add_argument('--skip', type=int, default=20, help='loader batches left out of the steady-state timing (worker start)')
    p.add_argument('--max-bs', type=int, default=8192, help='upper limit of the batch size search of (b)')
    p.add_argument('--only', nargs='+', default=['a', 'b', 'c'], choices=['a', 'b', 'c'], help='steps to run')
    p.add_argument('--tta-n', type=int, default=None, help="TTA passes of the final evaluation (default: the recipe's)")
    p.add_argument('--sizes', type=int, nargs='+', default=None, help="train only the recipe's stages of these sizes (default: all)")
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--threads', type=int, default=None, help="PyTorch CPU threads (default: PyTorch's; 1 on a busy CPU-only machine)")
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    if a.data is None: p.error('give the Tiny ImageNet archive or folder (or set TINY_IMAGENET)')
    r = get_recipe('full')
    if a.sizes:
        keep = [i for i,s in enumerate(r['sizes']) if s in a.sizes]
        if not keep: p.error(f"--sizes: the full recipe's stages are at {r['sizes']} px")
        r.update({k: tuple(r[k][i] for i in keep) for k in ('sizes', 'epochs', 'lrs')})
    arch,bs = a.arch or r['arch'],a.bs or r['bs']
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    devname = f"{torch.cuda.get_device_name(dev)} ({torch.cuda.get_device_properties(dev).total_memory/2**30:.0f} GiB)" if dev.type == 'cuda' else 'cpu (no GPU)'
    cmd = 'python ' + ' '.join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    rep = Report(a.out, device=devname, cpu=f"{cpu_model()}, {os.cpu_count()} cores", torch=torch.__version__,
                 python=platform.python_version(), command=cmd, arch=arch, bs=bs)
    deadline = T0 + a.deadline_s if a.deadline_s else None
    if dev.type == 'cuda': torch.backends.cudnn.benchmark = True
    try:
        # -------------------------------------------------------------- setup
        t = time.time()
        src = Path(a.data)
        path = get_tiny_imagenet(src, dest=a.data_dest or tempfile.mkdtemp(prefix='tiny_data_')) if not src.is_dir() else get_tiny_imagenet(src)
        ext_s,t = time.time()-t,time.time()
        workers = a.workers if a.workers is not None else min(16, os.cpu_count() or 1)
        set_seed(a.seed)
        dls = fast_dls(path, size=64, bs=bs, num_workers=workers, cache_dir=a.cache_dir, seed=a.seed, device=dev)
        rep('setup', path=str(path), extract_s=round(ext_s, 1), cache_s=round(time.time()-t, 1), n_train=len(dls.train_ds),
            n_valid=len(dls.valid_ds), workers=workers, cache_dir=str(dls.cache_dir))
        tmp = Path(tempfile.mkdtemp(prefix='gpu_bench_'))
        speeds = {}
        # -------------------------------------------------------------- (a)
        if 'a' in a.only:
            learn = tiny_learner(dls, arch, checkpoint=None, path=tmp)
            res = throughput(dls, learn, dev, a.steps, a.warmup, a.skip)
            rep('throughput', arch=arch, params=learn.rules['params'], skip=a.skip, steps=a.steps, **res)
            speeds['loader'] = res['loader_only_ips']
            del learn
        # -------------------------------------------------------------- (b)
        if 'b' in a.only:
            learn = tiny_learner(dls, arch, checkpoint=None, path=tmp)
            learn.model.to(dev)
            sizes = sorted({64, max(r['sizes'])})
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter('always')
                mb = {f'{s} px': find_max_bs(learn, s, max_bs=a.max_bs) for s in sizes}
            note = '; '.join(str(o.message) for o in w if 'find_max_bs' in str(o.message))
            rep('max_bs', **mb, **(dict(note=note) if note else {}))
            del learn
        if dev.type == 'cuda': torch.cuda.empty_cache()
        # -------------------------------------------------------------- (c)
        if 'c' in a.only:
            t_plan = time.time()
            budget = a.budget_s
            learn = tiny_learner(dls, arch, mix=r['mix'], ls=r['ls'], wd=r['wd'], path=tmp)
            nc = len(dls.vocab)
            loader_ips = speeds.get('loader', float('inf'))   # unknown without (a): the model's speed alone
            n_train,n_valid = len(dls.train_ds),len(dls.valid_ds)
            cost = []
            for s in r['sizes']:   # seconds per epoch: training at the slower of model and loader, validation, ~2 s overhead
                m = model_ips(arch, nc, dev, s, bs)
                cost.append(n_train/min(m, loader_ips) + n_valid/min(3*m, loader_ips) + 2)
            budget -= time.time()-t_plan
            tta_n = a.tta_n if a.tta_n is not None else r['tta_n']
            m_last = model_ips(arch, nc, dev, r['sizes'][-1], bs)
            eval_s = (2 + tta_n) * n_valid/min(3*m_last, loader_ips) + 5
            if deadline: budget = min(budget, deadline - time.time() - eval_s)
            epochs = plan_epochs(list(r['epochs']), cost, budget)
            stages = [(s, e, lr) for s,e,lr in zip(r['sizes'], epochs, r['lrs'])]
            info = dict(budget_s=round(budget), arch=arch, bs=bs, plan=', '.join(f'{e} epochs at {s}px (lr {lr:g})' for s,e,lr in stages),
                        recipe_plan=', '.join(f'{e} at {s}px' for s,e in zip(r['sizes'], r['epochs'])),
                        est_epoch_s={f'{s}px': round(c, 1) for s,c in zip(r['sizes'], cost)}, t0=time.time())
            rep('train', **{k:v for k,v in info.items() if k != 't0'})
            learn.add_cb(BudgetGuard(rep, info['t0'] + budget + 0.5*max(cost), info))   # lets the last epoch start a bit late
            with learn.no_bar(): progressive_fit(learn, stages, resume=False, config=dict(bs=bs), pct_start=r['pct_start'])
            train_s = time.time()-info['t0']
            hist = learn.checkpoint.history
            ev = evaluate(learn, size=hist[-1]['size'] if hist else 64, tta=tta_n > 0, n=max(tta_n, 1))
            rep('train', train_s=round(train_s, 1), epochs_done=len(learn.checkpoint.history), history=learn.checkpoint.history,
                tta_n=tta_n, eval_s=round(time.time()-info['t0']-train_s, 1), **ev)
        rep.d['status'] = 'done'
    except BaseException as e:
        import traceback
        rep.d['status'] = 'failed'; rep.d['error'] = traceback.format_exc()[-4000:]
        raise
    finally:
        rep.d['elapsed_s'] = round(time.time()-T0, 1); rep.write()
        print(markdown(rep.d), flush=True)
    return rep.d

if __name__ == '__main__': main()
