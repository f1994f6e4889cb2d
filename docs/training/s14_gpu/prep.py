"""Device prep: decode the CIFAR-10 folder into rlprune's image cache and print its fingerprint."""

import sys
import time

import torch

from models.data import load_dataset
from models.pretrained import data_fingerprint

t = time.time()
splits = load_dataset(sys.argv[1], seed=0)
fp = data_fingerprint(splits)
print(
    f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
    f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}"
)
print(
    f"decoded {len(splits.train)}/{len(splits.reward_val)}/{len(splits.test)} in "
    f"{time.time() - t:.1f}s; fingerprint {fp[:16]} match={fp.startswith('988471ca')}"
)
