"""What every benchmark script here shares: the machine it ran on and how busy it was.

The scripts import it as `from common import ...` (Python puts the script's folder, `bench/`, on the path)."""
import os, platform, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without installing

def cpu_model() -> str:
    "The CPU's model name"
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown CPU'

def load(sep:str='/') -> str:
    "The 1, 5 and 15-minute load averages"
    return sep.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'

def machine() -> str:
    "One line naming the machine: CPU, cores, Python, torch"
    import torch
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
