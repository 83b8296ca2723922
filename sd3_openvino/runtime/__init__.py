"""The torch-free runtime: the SD3 pipelines on OpenVINO with numpy (see `pipeline.py`); imports only `core`."""
