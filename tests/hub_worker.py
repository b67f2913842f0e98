"""A separate process for tests/test_hub.py: `get ENTRY_JSON` downloads a model
(to be stopped by SIGINT mid-file), `infer ENTRY_JSON PHOTO` classifies a photo
with a model from the cache and prints the result as JSON. `--no-torch` hides
torch before mixmim_jax is imported, as on a machine where it is not installed:
the path finder no longer sees it, so `import torch` raises ModuleNotFoundError
and find_spec("torch") is None. (sys.modules["torch"] = None would not do:
einops then takes torch for loaded and fails importing it.)"""
import importlib.machinery
import json
import sys


class _PathFinderWithoutTorch(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname.split(".")[0] == "torch":
      return None
    return super().find_spec(fullname, path, target)


if "--no-torch" in sys.argv:
  sys.meta_path[:] = [_PathFinderWithoutTorch if f is importlib.machinery.PathFinder else f
                      for f in sys.meta_path]

from mixmim_jax.weights import hub  # noqa: E402

mode, entry_json = sys.argv[1], sys.argv[2]
entry = hub.ModelEntry(**json.loads(entry_json))
hub.REGISTRY[entry.name.lower()] = entry

if mode == "get":
  hub.get_model(entry.name)
elif mode == "infer":
  from mixmim_jax import inference  # pylint: disable=ungrouped-imports
  result = inference.inference_model(entry.name, sys.argv[3])
  try:
    import torch  # noqa: F401  pylint: disable=unused-import
    torch_importable = True
  except ImportError:
    torch_importable = False
  print(json.dumps(dict(pred_label=result["pred_label"], pred_class=result["pred_class"],
                        pred_scores=result["pred_scores"].tolist(),
                        torch_importable=torch_importable, torch_loaded="torch" in sys.modules)))
