"""The project's headline as one command: `tiny-fastai train --preset sprint --budget B` from the archive, nothing decoded.

It runs the command exactly as a user would (a subprocess, with its own FASTAI_HOME and XDG_CACHE_HOME, so the archive
is extracted and decoded inside the budget and nothing of an earlier run is found warm), times it from the outside,
and reads what the run wrote: top-1 (plain and with the preset's TTA), the epochs the budget chose and the timings
they rest on, the seconds of each phase (results.json's `phases`), and one row per epoch with its training-only
images/s (the first epoch at each size pays the loader's start and, compiled, the compilation; epochs that validate
pay validation: both are marked). With `--compare ARCH` it runs the same command again with another model (e.g. the
separable `sep_fused_s`), for the side-by-side table. With `--bare` it also times the bare (compiled) training step
of the model at each size (random tensors on the device, no loader, no callbacks), the reference the loop is measured
against.

A lent GPU is lent once: `--deadline S` is the whole script's deadline. A run that is still going when the time its
budget allows (plus `--grace`) or the deadline is reached is stopped (SIGTERM to its process group, SIGKILL a few
seconds later), and what it wrote is kept: its log is written to OUT as it runs, its history.csv, results.json and
pictures are copied to OUT every few seconds, and OUT/headline.json and .md are rewritten after every step.

Usage (one H200, 15 minutes of device time: this is the third call, after the archive's parts and the wheels):
  python bench/headline.py path/to/tiny-imagenet-200.tar.gz --out OUT --budget 9m --deadline 570
The separable model at the same budget (the next lent GPU): ... --budget 9m --deadline 570 --arch sep_fused_s
On a CPU, `--quick` runs the demo preset on DATA (e.g. the bundled sample) with a budget of seconds, for testing."""
import argparse, json, os, platform, shlex, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_model, load


def write(out, d):
    "OUT/headline.json and .md, atomically"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (('headline.json', json.dumps(d, indent=1) + '\n'), ('headline.md', markdown(d))):
        tmp = out/f'.{name}.tmp'; tmp.write_text(text); os.replace(tmp, out/name)


def epoch_rows(res, n_train):
    "Per epoch: size, seconds, training-only images/s, and whether it was the first at its size or validated"
    rows, seen = [], set()
    for h in res.get('history', []):
        first = h['size'] not in seen; seen.add(h['size'])
        t = h.get('train_s') or h['time_s']
        rows.append(dict(epoch=h['epoch'] + 1, size=h['size'], time_s=h['time_s'], train_s=t, ips=round(n_train/t) if t else None,
                         first_at_size=first, validated=h.get('top1') is not None))
    return rows


KEEP = ('results.json', 'history.csv', 'history.png', 'confusion.png', 'top_losses.png', 'model.json')

def sync(run_dir, out, name):
    "Copy the small files the run has written so far to OUT (as `name_<file>`): what a stopped run leaves behind"
    for f in KEEP:
        src = Path(run_dir)/f
        if src.exists():
            try: shutil.copyfile(src, out/f'{name}_{f}')
            except OSError: pass


def train_command(preset, budget, data, run_dir, arch=None, extra=()):
    "The command a user types, run through the console script's entry point (`tiny_fastai.cli.run`)"
    return [sys.executable, '-c', 'from tiny_fastai.cli import run; run()', 'train', '--preset', preset, '--budget', budget,
            '--data', str(data), '--out', str(run_dir), *(['--arch', arch] if arch else []), *extra]


def stop(proc, grace=5.):
    "End `proc` and its process group (loader workers included): SIGTERM, then SIGKILL after `grace` seconds"
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.)):
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: return
        try: proc.wait(wait); return
        except subprocess.TimeoutExpired: pass


def run_train(name, data, out, budget, preset, arch, work, extra=(), until=None):
    "The CLI as a user runs it, isolated and stopped at `until` (a `time.time()`); what the run wrote, its wall time and how it ended"
    run_dir = work/name
    env = dict(os.environ, XDG_CACHE_HOME=str(work/f'cache-{name}'), FASTAI_HOME=str(work/f'fastai-{name}'), PYTHONUNBUFFERED='1')
    cmd = train_command(preset, budget, data, run_dir, arch, extra)
    command = 'tiny-fastai ' + ' '.join(cmd[3:])
    t = time.time()
    with open(out/f'{name}.log', 'w') as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ended = 'exit'
        while proc.poll() is None:
            if until is not None and time.time() >= until: stop(proc); ended = 'stopped at the deadline'; break
            sync(run_dir, out, name); time.sleep(1.)
    wall = time.time() - t
    sync(run_dir, out, name)
    base = dict(command=command, wall_s=round(wall, 1), ended=ended, returncode=proc.returncode)
    if ended != 'exit' or proc.returncode != 0 or not (run_dir/'results.json').exists():
        return dict(base, error=(ended if ended != 'exit' else f'exit code {proc.returncode}') + ': ' + (out/f'{name}.log').read_text()[-2000:])
    res = json.loads((run_dir/'results.json').read_text())
    rec = res['recipe']
    rows = epoch_rows(res, res['n_train'])
    epochs_s = sum(r['time_s'] for r in rows)
    steady = [r for r in rows if not r['first_at_size'] and not r['validated']]
    by_size = {s: round(sum(r['ips'] for r in steady if r['size'] == s)/max(1, len([r for r in steady if r['size'] == s])))
               for s in dict.fromkeys(r['size'] for r in rows)}
    return dict(base, budget_s=rec['budget'], top1=res['top1'], top5=res['top5'], top1_tta=res.get('top1_tta'), tta=rec['tta'],
                arch=rec['arch'], params=res['params'], epochs=sum(n for _, n, _ in rec['stages']),
                stages=[dict(size=s, epochs=n, lr=lr) for s, n, lr in rec['stages']], device=res['device'], budget=res.get('budget'),
                phases=res.get('phases'), results_wall_s=res.get('wall_s'), exit_s=round(wall - (res.get('wall_s') or wall), 1),
                epochs_s=round(epochs_s, 1), fixed_s=round(wall - epochs_s, 1), steady_ips=by_size, rows=rows)


def bare_steps(arch, sizes, bs, steps=20, warmup=5, compile=True):
    "Training images/s of the bare (compiled) step of `arch` at each size: tensors on the device, fused SGD, bf16, channels-last"
    import torch, torch.nn.functional as F
    from tiny_fastai.models import get_arch
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = get_arch(arch)(n_out=200).to(dev).train()
    cl = dev.type == 'cuda'
    if cl: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, **({'fused': True} if cl else {}))
    fwd = torch.compile(model, dynamic=False) if compile else model
    if not cl: torch.set_num_threads(1)   # a CPU test: one thread does not spin against other processes
    res = []
    for s in sizes:
        x = torch.randn(bs, 3, s, s, device=dev); y = torch.randint(0, 200, (bs,), device=dev)
        if cl: x = x.contiguous(memory_format=torch.channels_last)
        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cl):
                loss = F.cross_entropy(fwd(x), y)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        t = time.perf_counter()
        for _ in range(warmup): step()
        if cl: torch.cuda.synchronize()
        t1 = time.perf_counter()
        for _ in range(steps): step()
        if cl: torch.cuda.synchronize()
        res.append(dict(arch=arch, size=s, bs=bs, compiled=compile, ips=round(bs*steps/(time.perf_counter()-t1)),
                        warmup_s=round(t1 - t, 1)))
    return res


def markdown(d):
    f = lambda v, p='.4f': '-' if v is None else format(v, p)
    s = [f"# Headline run ({d['date']})", "", f"Machine: {d['device']}; {d['cpu']}; Python {d['python']}, torch {d['torch']}",
         "", f"Command: `{d['command']}`", ""]
    runs = [(k, v) for k, v in d['runs'].items()]
    if runs:
        s += ["| run | model (params) | budget s | command wall s | epochs | top-1 | top-1 TTA | epochs s | fixed s | steady train images/s by size |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for k, r in runs:
            if 'error' in r: s.append(f"| {k} | - | - | {r['wall_s']} | - | {r['ended']} | - | - | - | {r['error'][-200:]!r} |"); continue
            s.append(f"| {k} | {r['arch']} ({r['params']/1e6:.1f}M) | {f(r['budget_s'], '.0f')} | {r['wall_s']} | {r['epochs']} | "
                     f"{f(r['top1'])} | {f(r['top1_tta'])} ({r['tta']}) | {r['epochs_s']} | {r['fixed_s']} | "
                     + ', '.join(f"{k2} px: {v2:,}" for k2, v2 in r['steady_ips'].items()) + " |")
        for k, r in runs:
            if 'error' in r: continue
            s += ["", f"## {k}: `{r['command']}`", "", f"Plan chosen by the budget: " +
                  ', '.join(f"{st['epochs']} x {st['size']} px (lr {st['lr']:.2g})" for st in r['stages']),
                  f"Budget record: {json.dumps(r['budget'])}", "", "| phase | s |", "|---|---|"]
            s += [f"| {ph} | {v} |" for ph, v in (r.get('phases') or {}).items()] + [f"| after results.json (exit) | {r['exit_s']} |", f"| command | {r['wall_s']} |"]
            s += ["", "| epoch | size | s | training s | training images/s | note |", "|---|---|---|---|---|---|"]
            s += [f"| {x['epoch']} | {x['size']} | {x['time_s']} | {x['train_s']} | {x['ips']:,} | "
                  f"{'first at this size' if x['first_at_size'] else ''}{' validated' if x['validated'] else ''} |" for x in r['rows']]
    if d.get('bare'):
        s += ["", "## Bare training step (no loader, no callbacks)", "", "| model | size | batch | compiled | images/s | warm-up s |", "|---|---|---|---|---|---|"]
        s += [f"| {b['arch']} | {b['size']} | {b['bs']} | {b['compiled']} | {b['ips']:,} | {b['warmup_s']} |" for b in d['bare']]
    if d.get('error'): s += ["", "Error: " + d['error']]
    return '\n'.join(s) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', default=os.environ.get('TINY_IMAGENET'), help='the archive (or a folder); default $TINY_IMAGENET')
    p.add_argument('--out', default='runs/headline')
    p.add_argument('--budget', default='9m', help='the budget of the headline command (default 9m)')
    p.add_argument('--arch', default=None, help="the model of the headline run (default: the preset's)")
    p.add_argument('--compare', default=None, help='a second model to run with the same command (e.g. sep_fused_s)')
    p.add_argument('--compare-budget', default=None, help='its budget (default: --budget)')
    p.add_argument('--variant', action='append', default=[], metavar='NAME=OPTIONS',
                   help="one more run of the same command with extra options, e.g. bs1024='--bs 1024 --lr 0.8' (repeatable): the levers table")
    p.add_argument('--skip-headline', action='store_true', help='run only the --compare and --variant runs')
    p.add_argument('--bare', action='store_true', help='also time the bare compiled step of each model at the sizes')
    p.add_argument('--work-dir', default=None)
    p.add_argument('--deadline', type=float, default=None, help='seconds the whole script may take: a run still going then is stopped, what it wrote kept')
    p.add_argument('--grace', type=float, default=30., help="seconds a run may exceed its own budget before it is stopped (default 30)")
    p.add_argument('--quick', action='store_true', help='on a CPU: the demo preset on DATA with a budget of seconds')
    a = p.parse_args(argv)
    if a.data is None: p.error('give the Tiny ImageNet archive or folder (or set TINY_IMAGENET)')
    t0 = time.time()
    end = t0 + a.deadline if a.deadline else None
    def until(budget):
        "When a run of `budget` started now must be stopped: its budget and the grace, or the script's deadline"
        from tiny_fastai.plan import check_budget
        t = time.time() + check_budget(budget) + a.grace
        return t if end is None else min(t, end)
    import torch
    out, work = Path(a.out), Path(a.work_dir or tempfile.mkdtemp(prefix='headline_'))
    gpu = torch.cuda.is_available()
    preset = 'demo' if a.quick else 'sprint'
    d = dict(date=time.strftime('%Y-%m-%d'), device=torch.cuda.get_device_name(0) if gpu else 'cpu (no GPU)',
             cpu=f"{cpu_model()}, {os.cpu_count()} cores, load {load()}", python=platform.python_version(), torch=torch.__version__,
             command='python ' + ' '.join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
             runs={}, bare=[], status='running')
    write(out, d)
    try:
        extra = ('--sizes', '16,24', '--epochs', '1,2', '--bs', '32') if a.quick else ()
        if not a.skip_headline: d['runs']['headline'] = run_train('headline', a.data, out, a.budget, preset, a.arch, work, extra, until(a.budget)); write(out, d)
        for v in a.variant:
            name, _, opts = v.partition('=')
            if not name or not name.isidentifier(): p.error(f"--variant {v!r}: give NAME=OPTIONS with a plain name")
            d['runs'][name] = run_train(name, a.data, out, a.budget, preset, a.arch, work, tuple(extra) + tuple(shlex.split(opts)), until(a.budget))
            write(out, d)
        if a.compare:
            d['runs'][a.compare] = run_train(a.compare, a.data, out, a.compare_budget or a.budget, preset, a.compare, work, extra, until(a.compare_budget or a.budget))
            write(out, d)
        if a.bare and (end is None or time.time() < end - 60):   # the bare step needs about a minute
            sizes = (16, 24) if a.quick else (32, 48, 64)
            for arch in [a.arch or ('tiny' if a.quick else 'dense')] + ([a.compare] if a.compare else []):
                d['bare'] += bare_steps(arch, sizes, 16 if a.quick else 512, *((3, 1) if a.quick else (20, 5)), compile=gpu)
                write(out, d)
        d['status'] = 'done' if all(r.get('ended', 'exit') == 'exit' for r in d['runs'].values()) else 'stopped at the deadline'
        d['script_s'] = round(time.time() - t0, 1)
    except BaseException as e:
        d['status'], d['error'] = 'failed', f"{type(e).__name__}: {e}"[-2000:]
        raise
    finally:
        write(out, d); print(markdown(d), flush=True)
    return d


if __name__ == '__main__':
    main(); sys.stdout.flush(); os._exit(0)
