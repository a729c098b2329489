"""Custom differentiable ops with hand-written gradients, and a fast augmentation op.

Each op lives in its own module and comes in three parts:

- ``reference_<op>``: the op written with plain ``keras.ops``; Keras differentiates it.
- ``<op>``: the same op with a hand-written backward pass
  (``keras.ops.custom_gradient``).
- a Layer that wraps it, registered for serialization under the package ``"kernels"``
  so that a model using it saves as ``.keras`` and reloads with ``safe_mode=True``.

Modules:

- :mod:`kernels.swish`: Swish with a learnable ``beta`` (``LearnableSwish``).
- :mod:`kernels.lp_pooling`: power-average pooling with a learnable power
  (``LPPooling2D``).
- :mod:`kernels.conv`: weight-standardized convolution (``WSConv2D``) and a fixed
  Sobel edge filter (``SobelEdges``).
- :mod:`kernels.attention`: additive (Bahdanau) attention pooling over time
  (``AdditiveAttentionPooling``).
- :mod:`kernels.roi_align`: ROI-Align, a fixed-size feature grid per box by
  bilinear sampling (``ROIAlign``), with gradients for the features and the
  boxes; Lab 8's Faster R-CNN crops its proposals with it.
- :mod:`kernels.warp`: a batched random affine warp for augmentation
  (``RandomAffineWarp``): one batched ``grid_sample`` call on torch.
- :mod:`kernels.gradcheck`: a small finite-difference gradient checker.

The package imports only keras, plus torch for the fast paths on the torch backend.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from kernels import (  # noqa: E402
    attention,
    conv,
    gradcheck,
    lp_pooling,
    roi_align,
    swish,
    warp,
)
from kernels.attention import AdditiveAttentionPooling  # noqa: E402
from kernels.conv import SobelEdges, WSConv2D  # noqa: E402
from kernels.lp_pooling import LPPooling2D  # noqa: E402
from kernels.roi_align import ROIAlign  # noqa: E402
from kernels.swish import LearnableSwish  # noqa: E402
from kernels.warp import RandomAffineWarp  # noqa: E402

__all__ = [
    "AdditiveAttentionPooling",
    "LPPooling2D",
    "LearnableSwish",
    "ROIAlign",
    "RandomAffineWarp",
    "SobelEdges",
    "WSConv2D",
    "attention",
    "conv",
    "gradcheck",
    "lp_pooling",
    "roi_align",
    "swish",
    "warp",
]
