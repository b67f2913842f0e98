"""Plot a run's logged scalars (the loss by default) from its TensorBoard events.

  python -m mixmim_jax.tools.plot_curves /tmp/fmnist_pre --out=loss.png --steps-per-epoch=468

Reads WORKDIR/tensorboard (the files metrics.MetricWriter writes; a resumed run
logs some steps twice, and the later value wins) and draws each tag against the
step, with the epoch on a second axis when --steps-per-epoch is given; where
TAG_min and TAG_max are logged too (the few-shot probes' seeds), their range is
shaded. Several workdirs draw as one run, a later one's value of a step
winning (e.g. probes of a run's early checkpoints, taken after the fact and
logged to another folder, then the run's own rounds). Needs
matplotlib (requirements-test.txt), which the runtime itself does not.

  python -m mixmim_jax.tools.plot_curves RUN --tags=eval/knn_top1,eval/fewshot_10shot --out=probes.png
"""
from __future__ import annotations

import argparse
import io

from etils import epath
from tensorboard.compat.proto import event_pb2


def _records(data: bytes):
  """The payloads of a TFRecord stream (length, length CRC, data, data CRC)."""
  offset = 0
  while offset + 12 <= len(data):
    length = int.from_bytes(data[offset:offset + 8], "little")
    start = offset + 12
    if start + length + 4 > len(data):
      break                      # a file cut short while being rewritten
    yield data[start:start + length]
    offset = start + length + 4


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from every event file of WORKDIR/tensorboard, in
  name order (so a resumed run's later value of a step wins)."""
  logdir = epath.Path(workdir) / "tensorboard"
  if not logdir.is_dir():
    raise FileNotFoundError(f"{logdir} does not exist: is {workdir} a workdir of "
                            "mixmim_jax.main or mixmim_jax.finetune?")
  scalars: dict[str, dict[int, float]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for payload in _records(path.read_bytes()):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
  return scalars


def merge_scalars(workdirs: list[str]) -> dict[str, dict[int, float]]:
  """read_scalars of each workdir, as one: for a step logged in several, the
  later workdir's value."""
  merged: dict[str, dict[int, float]] = {}
  for workdir in workdirs:
    for tag, values in read_scalars(workdir).items():
      merged.setdefault(tag, {}).update(values)
  return merged


def plot(scalars: dict[str, dict[int, float]], tags: list[str], title: str,
         steps_per_epoch: int = 0, log_y: bool = False, baseline: str = "") -> bytes:
  """PNG bytes of one panel per tag; with `baseline`, a dotted line at the
  first step's value, labelled so (e.g. the probes of the untrained encoder)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit("plot_curves needs matplotlib: pip install matplotlib") from e
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  missing = [t for t in tags if t not in scalars]
  if missing:
    raise SystemExit(f"no scalar named {missing[0]!r} in the events; they hold "
                     f"{sorted(scalars)}.")
  fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 3.6), squeeze=False)
  for ax, tag in zip(axes[0], tags):
    steps = sorted(scalars[tag])
    ax.plot(steps, [scalars[tag][s] for s in steps], marker=".", linewidth=1.2)
    low, high = scalars.get(f"{tag}_min", {}), scalars.get(f"{tag}_max", {})
    banded = [s for s in steps if s in low and s in high]
    if banded:
      ax.fill_between(banded, [low[s] for s in banded], [high[s] for s in banded], alpha=0.25,
                      label="range over seeds")
    if baseline:
      ax.axhline(scalars[tag][steps[0]], linestyle=":", color="grey", label=baseline)
    if banded or baseline:
      ax.legend(loc="lower right")
    ax.set_xlabel("step")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    if log_y:
      ax.set_yscale("log")
    if steps_per_epoch:
      top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                 lambda e: e * steps_per_epoch))
      top.set_xlabel("epoch")
  fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  return buffer.getvalue()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="workdir",
                      help="one run's workdir, or several drawn as one run (later wins)")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--tags", default="loss", help="comma-separated scalar names")
  parser.add_argument("--title", default="")
  parser.add_argument("--steps-per-epoch", type=int, default=0)
  parser.add_argument("--log-y", action="store_true")
  parser.add_argument("--baseline", default="",
                      help="label of a dotted line at each tag's first value")
  args = parser.parse_args(argv)
  scalars = merge_scalars(args.workdirs)
  tags = [t for t in args.tags.split(",") if t]
  title = args.title or " + ".join(args.workdirs)
  png = plot(scalars, tags, title, args.steps_per_epoch, args.log_y, args.baseline)
  epath.Path(args.out).write_bytes(png)
  for tag in tags:
    steps = sorted(scalars[tag])
    print(f"{tag}: {len(steps)} points, step {steps[0]} = {scalars[tag][steps[0]]:.4f} -> "
          f"step {steps[-1]} = {scalars[tag][steps[-1]]:.4f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
