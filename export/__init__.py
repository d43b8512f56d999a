"""Host side: export pretrained backbones to ONNX fp32/int8 and TFLite int8, with model cards.

Needs the ``export`` extra (torch, litert-torch, onnx); the device runtime never imports this.
"""

from edge_runtime.export.pipeline import export_backbone

__all__ = ["export_backbone"]
