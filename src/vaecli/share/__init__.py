"""Sharing a trained run outside vaecli: ONNX graphs that run without torch (:mod:`.onnx`) and the
Hugging Face Hub's model-repository layout, upload and download (:mod:`.hub`). Their libraries are
optional extras (``vaecli[onnx]``, ``vaecli[hub]``), imported only when used."""
