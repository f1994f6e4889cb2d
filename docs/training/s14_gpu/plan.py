"""Device plan: epochs per model from the calibration logs so every run ends by the deadline."""

import ast
import re
import sys

deadline_left, cap = float(sys.argv[1]), int(sys.argv[2])
for model in sys.argv[3:]:
    times = {}
    for line in open(f"/tmp/calib_{model}.log"):
        m = re.search(r"epoch (\d+)/\d+: (\{.*\})", line)
        if m:
            times[int(m.group(1))] = ast.literal_eval(m.group(2).replace("nan", "None"))["time_s"]
    if len(times) < 3:
        print(f"{model} 0 nan")
        continue
    per_epoch = (times[3] - times[1]) / 2
    epochs = int(min(cap, 0.92 * (deadline_left - 25) / per_epoch))
    print(f"{model} {epochs} {per_epoch:.2f}")
