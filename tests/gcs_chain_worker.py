"""The whole chain with every workdir and file on gs://, as one process:
pretrain -> fine-tune (init_from the pretraining workdir) -> evaluate ->
export -> predict, and the workdir lock. Run by tests/test_gcs_chain.py against a local GCS emulator
(the environment points etils.epath's gcsfs and tensorstore at it); prints a
JSON summary as its last line.

  python tests/gcs_chain_worker.py DATA_DIR PHOTO
"""
import json
import logging
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from etils import epath  # noqa: E402

import train_fixtures  # noqa: E402
from mixmim_jax import export, inference  # noqa: E402
from mixmim_jax.evaluation import accuracy  # noqa: E402
from mixmim_jax.trainers import finetune, pretrain  # noqa: E402
from mixmim_jax.training import recipes, workdir_lock  # noqa: E402

logging.getLogger("gcsfs").setLevel(logging.ERROR)   # "no credentials": the emulator needs none
data_dir, photo = sys.argv[1], sys.argv[2]
BUCKET = "gs://bucket"

pre = train_fixtures.tiny_config(data_dir, num_train_steps=2, image_every_steps=2,
                                 batch_size=8, **{"mesh.data": 1})
pretrained = pretrain.train(pre, f"{BUCKET}/pre")

ft = recipes.finetune_defaults()
ft.model.update(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                window_sizes=(4, 4, 2, 1), patch_size=2)
ft.num_classes = 10
ft.data.update(source="fashion_mnist", fashion_mnist_dir=data_dir, split="train",
               eval_split="test", image_size=32, eval_resize=32, num_parallel_calls=1)
ft.batch_size = ft.eval_batch_size = 8
ft.mesh.data = 1
ft.num_train_steps, ft.checkpoint_every_steps, ft.log_every_steps = 2, 2, 1
ft.init_from = f"{BUCKET}/pre"
tuned = finetune.finetune(ft, f"{BUCKET}/ft")

scores = accuracy.evaluate_checkpoint(f"{BUCKET}/ft", ft)
export.export(f"{BUCKET}/ft", f"{BUCKET}/model.msgpack")
top5 = inference.top_k(inference.load(f"{BUCKET}/model.msgpack"), [photo])[0]

# One run per workdir on gs:// too: a second run is refused while the first
# holds the lock; a lock whose heartbeat stopped long ago is taken over.
held = workdir_lock.take(f"{BUCKET}/pre", 0, 1)
try:
  workdir_lock.take(f"{BUCKET}/pre", 0, 1)
  busy = "taken twice"
except workdir_lock.WorkdirBusy as e:
  busy = str(e)
held.release()
stale = epath.Path(f"{BUCKET}/stale/run.lock")
stale.write_text(json.dumps(dict(host="elsewhere", pid=1, heartbeat=time.time() - 3600,
                                 token="theirs")))
workdir_lock.take(f"{BUCKET}/stale", 0, 1).release()


def walk(path):
  for child in path.iterdir():
    if child.is_dir():
      yield from walk(child)
    else:
      yield str(child)[len(BUCKET) + 1:]


files = sorted(walk(epath.Path(BUCKET)))
print(json.dumps(dict(pretrain_steps=pretrained["final_step"], finetune_steps=tuned["final_step"],
                      eval_count=scores["count"], top5=[row[0] for row in top5], files=files,
                      busy=busy)))
