"""Per-modality encoders behind one contract (`Encoder`) and one registry.

    >>> from mmfuse import encoders
    >>> enc = encoders.build("image", "resnet18")
    >>> enc.output_dim, enc.input_spec.size
    (512, 224)
    >>> encoders.available()["text"]
    ['embedding-bag', 'hf']

Every family module registers its variants on import; importing this package imports them all.
"""

from mmfuse.encoders import (  # noqa: F401  (imported for their registrations)
    audio_cnn,
    audio_rnn,
    efficientnet,
    hf,
    image_cnn,
    resnet,
    sound_cnn,
    tabular,
    text_bag,
    video_3d,
    video_frames,
)
from mmfuse.encoders.base import (
    MODALITIES,
    Encoder,
    EncoderError,
    available,
    build,
    check_shape,
    option_names,
    register,
)

__all__ = [
    "MODALITIES",
    "Encoder",
    "EncoderError",
    "available",
    "build",
    "check_shape",
    "option_names",
    "register",
]
