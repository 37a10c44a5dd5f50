"""Run by `tests/test_distrib.py` under `torchrun --nproc_per_node=2` on CPU: exercises `tiny_fastai.distrib` and writes
what each rank saw to `OUT/rank<r>.json`. Usage: torchrun --nproc_per_node=2 tests/distrib_worker.py OUT [--data]"""
import sys, json, os, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
os.environ.setdefault('MPLBACKEND', 'Agg')
import torch, torch.distributed as dist
from torch import nn
from fastai.basics import *
from fastai.callback.all import *
from tiny_fastai.core import *      # world_size, since the re-cut (issue 17) in core, not distrib
from tiny_fastai.distrib import *
from tiny_fastai.evaluate import evaluate

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
dev = init_distrib()
rank,ws = rank_distrib(),world_size()
res = dict(rank=rank, world_size=ws, backend=dist.get_backend(), device=str(dev))

def checksum(model): return float(sum(p.detach().double().abs().sum() for p in get_model(model).state_dict().values() if p.is_floating_point()))
def opt_checksum(opt):
    return float(sum(v.double().abs().sum() for st in opt.state_dict()['state'] for v in st.values() if isinstance(v, torch.Tensor)))

def synth_learner(n_train=136, n_valid=51, bs=8, seed=0):
    "With 2 ranks: 51 val items need one item of padding; with drop_last fastai's `DistributedDL.__len__` says 9 batches, each rank makes 8"
    set_seed(seed)
    x = torch.randn(n_train+n_valid, 8); y = (x[:,:3].sum(1) > 0).long() + (x[:,3] > 1).long()
    ds = [(a,b) for a,b in zip(x,y)]
    dls = DataLoaders.from_dsets(ds[:n_train], ds[n_train:], bs=bs, device='cpu', num_workers=0)
    model = nn.Sequential(nn.Linear(8,16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16,3))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[accuracy, error_rate], path=out/'synth')

# --- synthetic learner: lr_find, fit_one_cycle, exact metrics, ordered predictions
learn = synth_learner()
with distrib_training(learn):
    res['trainer'] = [type(c).__name__ for c in learn.cbs if 'Trainer' in type(c).__name__]
    res['metric_types'] = [type(m).__name__ for m in learn.metrics]
    with learn.no_bar(): sug = learn.lr_find(num_it=30, show_plot=False)
    res['after_lr_find'] = dict(params=checksum(learn.model), opt=opt_checksum(learn.opt),
                                n_opt_state=sum(len(s) for s in learn.opt.state_dict()['state']),
                                bn=[type(m).__name__ for m in learn.model.modules() if 'Norm' in type(m).__name__])
    res['lr'] = float(sug.valley)
    lr = broadcast_object(float(sug.valley))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, lr)
    res['n_batches'] = [len(learn.dls.train), learn.train_iter]
    res['last_lr'],res['lr_max'] = float(learn.recorder.lrs[-1]),lr
    res['recorded'] = [[float(v) for v in row] for row in learn.recorder.values]  # train_loss, valid_loss, accuracy, error_rate
    res['inside'] = [t.tolist() for t in get_preds_all(learn)]
res['params'] = checksum(learn.model)
res['metric_types_after'] = [type(m).__name__ for m in learn.metrics]
with learn.no_bar():
    _,tg = learn.get_preds()            # plain fastai: gathers each batch from every rank
    with no_gather(learn):              # the whole val set on this rank, as in a single process
        p,t = learn.get_preds()
        res['plain_validate'] = [float(v) for v in learn.validate()]
    res['fastai_get_preds_right'] = bool(len(tg) == len(t) and (tg == t).all())
    res['plain'] = [p.tolist(), t.tolist()]
    res['outside'] = [o.tolist() for o in get_preds_all(learn)]
    res['evaluate'] = evaluate(learn, tta=None)   # TTA needs fastai Datasets: tested with tiny_dls below

# --- a NaN loss on rank 1 only: every rank must stop at the same batch
learn = synth_learner()
class NaNOnRank1(Callback):
    order = 5
    def after_loss(self):
        if self.training and rank_distrib() == 1 and self.iter == 3: self.learn.loss = self.loss*float('nan')
learn.add_cbs([NaNOnRank1(), TerminateOnNaNCallback()])
with distrib_training(learn), learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
res['nan_stop'] = [learn.epoch, learn.iter]

# --- rank 0 errors reach every rank
try: on_rank0(lambda: 1/0); res['on_rank0_error'] = None
except ZeroDivisionError as e: res['on_rank0_error'] = str(e)
res['rank0_first'] = rank0_first(lambda: rank_distrib())

# --- the DataBlock loader of tiny_dls and the array one (cache=True) under DistribDL
if '--data' in sys.argv:
    from tiny_fastai.data import sample_path
    from tiny_fastai.loaders import tiny_dls
    from tiny_fastai.models import get_arch
    res['data'] = {}
    for fast in (False, True):
        kw = dict(cache=True, cache_dir=out/'cache') if fast else {}     # rank0_first: one process builds the array cache
        dls = rank0_first(tiny_dls, sample_path(), size=16, bs=local_bs(48), num_workers=0, seed=0, **kw)
        set_seed(0)
        learn = Learner(dls, get_arch('tiny')(n_out=len(dls.vocab)), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                        path=out/'data')
        with distrib_training(learn), learn.no_bar(), learn.no_logging(): learn.fit(1, 3e-3)
        recorded_acc,batches = float(learn.recorder.values[-1][2]),learn.train_iter   # now: get_preds resets them (fastai)
        with learn.no_bar():
            pa,ta = get_preds_all(learn)
            with no_gather(learn): pp,tp = learn.get_preds()
        res['data']['fast' if fast else 'datablock'] = dict(
            n_train=len(dls.train_ds), n_valid=len(ta), batches=batches, targs_in_order=bool((ta == tp).all()),
            max_diff=float((pa-pp).abs().max()), recorded_acc=recorded_acc,
            plain_acc=float(accuracy(pp, tp)), params=checksum(learn.model),
            evaluate=evaluate(learn, tta='aug', n=1) if not fast else None)

(out/f'rank{rank}.json').write_text(json.dumps(res))
