"""A local GCS server for tests: gcp-storage-emulator (in memory), with the
one header it leaves out that tensorstore needs.

Real GCS answers a media download with `x-goog-generation` (the object's
version); tensorstore's GCS driver reads it on every read and stops with
"Malformed StorageGeneration" without it. The emulator knows the generation
(it is in the object's metadata) but does not send it, so it is added here.

  python tests/gcs_emulator.py PORT BUCKET
"""
import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
  except Exception:  # pylint: disable=broad-except  (a missing object: the handler says so)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download_with_generation

from gcp_storage_emulator.server import create_server  # noqa: E402  (after the patch)

if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
